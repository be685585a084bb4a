"""ProxylessNAS on the mobilenet space: binary-gate gradients (finite differences, float64), the two-path α gradient
and rescaling, the one-path weight step, the schedule, expected latency from a table and from FLOPs, bad tables,
resume, the CLI with every selector, and the paper config."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from archselect.arch import parse_mobilenet
from archselect.cli import main
from archselect.config import SearchConfig, load_config
from archselect.errors import UserError
from archselect.evaluate.flops import count_flops
from archselect.mobilenet_text import CELL_TYPES, OPS
from archselect.optimizers import OPTIMIZERS
from archselect.optimizers.latency import flops_table, read_table
from archselect.optimizers.loop import epoch_means
from archselect.optimizers.proxylessnas import (alpha_gradient, binarize, enabled_probs, gate_plan, gate_values,
                                                involved_probs, rescale_pairs)
from archselect.spaces import get

from conftest import tiny_idx_dir

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = [1, 2, 1, 1, 1, 1]
TINY = dict(resolution=32, width_mult=0.25, stage_layers=LAYERS, in_channels=1, num_classes=3)
ZERO = OPS.index("zero")
ARCH = "mobilenet:mb6_k5|mb3_k3,zero|mb3_k7|mb6_k3|mb3_k5|mb6_k7"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mobilenet-proxylessnas-imagenet.yaml"


def tiny_supernet(dtype=torch.float32):
    torch.manual_seed(0)
    return get("mobilenet", **TINY).supernet().to(dtype).train()


def batch(seed, dtype=torch.float32, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def make(sn, epochs=4, **options):
    options = {"update_every": 1, "skip_first_alpha_epoch": False, **options}
    cfg = SearchConfig(optimizer="proxylessnas", epochs=epochs, options=options, w_lr=0.1, a_lr=0.05, a_beta1=0.0,
                       a_weight_decay=0.0)
    return OPTIMIZERS.get("proxylessnas")(sn, cfg, steps_per_epoch=2)


# -- the gradient estimate ---------------------------------------------------------------------------------------------

def test_gate_gradients_match_finite_differences(float64):
    """∂L/∂g_j from autograd (gates multiply each involved block's output) equals central differences of the loss
    in each gate, on a tiny supernet in float64; `zero`'s gate (never computed) has gradient 0."""
    sn = tiny_supernet(torch.float64).eval()
    x, y = batch(1, torch.float64, n=4)
    torch.manual_seed(3)
    draws = {ct: binarize(sn.alphas[ct], sn.mask(ct), "two") for ct in CELL_TYPES}
    draws["stage2"] = ([0, ZERO], torch.tensor([[1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 1]], dtype=torch.bool))

    def loss(gates):
        plans = {ct: gate_plan(gates[ct], draws[ct][1], sn.op_names) for ct in CELL_TYPES}
        return F.cross_entropy(sn.forward_plans(x, plans), y)

    gates = {ct: gate_values(draws[ct][0], sn.alphas[ct].detach()) for ct in CELL_TYPES}
    grads = dict(zip(CELL_TYPES, torch.autograd.grad(loss(gates), list(gates.values()))))
    h = 1e-6
    checked = 0
    with torch.no_grad():
        for ct in CELL_TYPES:
            for e, k in draws[ct][1].nonzero().tolist():
                up = {c: g.detach().clone() for c, g in gates.items()}
                down = {c: g.detach().clone() for c, g in gates.items()}
                up[ct][e, k] += h
                down[ct][e, k] -= h
                fd = (loss(up) - loss(down)) / (2 * h)
                assert grads[ct][e, k].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-9)
                checked += 1
    assert grads["stage2"][1, ZERO] == 0 and grads["stage2"][1, 2] != 0  # zero active: the other gate still learns
    assert checked == 2 * sum(LAYERS) - 1  # two gates per layer, stage2's first layer one


def test_alpha_gradient_is_the_gradient_of_the_renormalised_softmax(float64):
    """Σ_j G_j q_j (δ_ij − q_i) over the drawn pair equals autograd of Σ_j G_j q_j(α) with q the two-op softmax;
    the ops not drawn get 0. The same with every op involved (full mode)."""
    torch.manual_seed(0)
    alpha = torch.randn(5, 7, requires_grad=True)
    G = torch.randn(5, 7)
    pair = torch.zeros(5, 7, dtype=torch.bool)
    for e, (i, j) in enumerate([(0, 1), (2, 6), (3, 5), (4, 0), (1, 6)]):
        pair[e, [i, j]] = True
    for involved in (pair, torch.ones(5, 7, dtype=torch.bool)):
        q = involved_probs(alpha, involved)
        expected, = torch.autograd.grad((G * q).sum(), alpha)
        got = alpha_gradient(q.detach(), G)
        assert torch.allclose(got, expected, atol=1e-14)
    assert (alpha_gradient(involved_probs(alpha, pair).detach(), G)[~pair] == 0).all()


def test_two_path_draws_and_the_rescale_keep_unsampled_probabilities(float64):
    torch.manual_seed(0)
    alpha = torch.randn(4, 7)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[0, ZERO] = False
    mask[3] = False
    mask[3, 2] = True  # a single enabled op
    active, involved = binarize(alpha, mask, "two")
    assert involved[:3].sum(1).tolist() == [2, 2, 2] and not involved[0, ZERO]
    assert involved[3].nonzero().tolist() == [[2]]
    assert all(involved[e, k] for e, k in enumerate(active))
    _, full = binarize(alpha, mask, "full")
    assert torch.equal(full, mask)
    new = alpha + torch.randn(4, 7) * involved  # an optimizer step on the involved α only
    rescale_pairs(new, alpha, involved)
    p_old, p_new = torch.softmax(alpha, 1), torch.softmax(new, 1)
    assert torch.allclose(p_new[~involved], p_old[~involved], atol=1e-15)
    assert torch.allclose(torch.logsumexp(new.masked_fill(~involved, -math.inf), 1)[:3],
                          torch.logsumexp(alpha.masked_fill(~involved, -math.inf), 1)[:3], atol=1e-14)
    assert torch.allclose(new[3], alpha[3], atol=1e-15)


def test_one_step_trains_one_path_and_moves_only_the_drawn_pairs():
    """Weight step: exactly one block per layer changes. α step (Adam β1 = 0, no decay): per layer at most the
    two drawn α move, and every op not drawn keeps its probability."""
    sn = tiny_supernet()
    opt = make(sn)
    alphas0 = {ct: a.detach().clone() for ct, a in sn.alphas.items()}
    blocks0 = {(i, name): [p.detach().clone() for p in op.parameters()]
               for i, layer in enumerate(sn.body.layers) for name, op in layer.ops.items()}
    out = opt.step(batch(1), batch(2), epoch=0)
    assert {"train_loss", "valid_loss", "valid_acc"} <= set(out) and all(math.isfinite(v) for v in out.values())
    changed = {i: [name for (j, name), ps in blocks0.items() if j == i and any(
        not torch.equal(p, q) for p, q in zip(ps, sn.body.layers[i].ops[name].parameters()))]
        for i in range(len(sn.body.layers))}
    assert all(len(names) == 1 for names in changed.values()), changed
    moved = 0
    for ct in CELL_TYPES:
        diff = sn.alphas[ct].detach() != alphas0[ct]
        assert (diff.sum(1) <= 2).all()
        p0, p1 = (torch.softmax(a.masked_fill(~sn.mask(ct), -math.inf), 1) for a in (alphas0[ct], sn.alphas[ct]))
        assert torch.allclose(p1[~diff & sn.mask(ct)], p0[~diff & sn.mask(ct)], atol=1e-6)
        moved += int(diff.any(1).sum())
    assert moved >= sum(LAYERS) - 1  # a zero-active layer moves too (the paper's estimator)


def test_zero_active_layers_keep_alpha_with_the_released_rule():
    sn = tiny_supernet()
    with torch.no_grad():
        sn.alphas["stage2"][1].fill_(-10.0)
        sn.alphas["stage2"][1, ZERO] = 10.0  # zero is drawn and active (but for a chance of about 1e-8)
    before = sn.alphas["stage2"].detach().clone()
    opt = make(sn, update_zero_active=False)
    opt.step(batch(1), batch(2), epoch=0)
    assert torch.equal(sn.alphas["stage2"][1], before[1])
    make(sn).step(batch(1), batch(2), epoch=0)
    assert not torch.equal(sn.alphas["stage2"][1], before[1])


def test_schedule_warmup_then_cosine_and_when_alpha_steps():
    sn = tiny_supernet()
    opt = make(sn, epochs=6, warmup_epochs=2, warmup_lr=0.05, update_every=3, skip_first_alpha_epoch=True)
    lrs = [opt.scheduler.lr_at(e) for e in range(6)]
    assert lrs[:3] == pytest.approx([0.05, 0.025, 0.1])
    assert lrs[3] == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi / 4)) / 2)
    assert opt.lr == pytest.approx(0.05)
    due = []
    for e in range(6):
        for b in range(6):
            opt.batch_index = b
            if opt.alpha_due(e):
                due.append((e, b))
    assert due == [(e, b) for e in (3, 4, 5) for b in (2, 5)]
    opt.freeze_alpha()
    assert not opt.alpha_due(5)


# -- expected latency --------------------------------------------------------------------------------------------------

def table_dict(sn):
    rows = {}
    for ct in CELL_TYPES:
        rows[ct] = [{op: float(10 * e + k + 1) for k, op in enumerate(OPS) if sn.mask(ct)[e, k] and op != "zero"}
                    for e in range(len(sn.edges[ct]))]
    return {"fixed": 2.5, **rows}


def write_csv(path, data):
    lines = ["stage,layer,op,latency", f"fixed,,,{data['fixed']}"]
    lines += [f"{ct},{e},{op},{v}" for ct in CELL_TYPES for e, row in enumerate(data[ct]) for op, v in row.items()]
    path.write_text("\n".join(lines) + "\n")


def test_latency_table_yaml_json_csv_and_the_expectation(tmp_path):
    sn = tiny_supernet()
    data = table_dict(sn)
    (tmp_path / "t.yaml").write_text(json.dumps(data))  # JSON is YAML
    (tmp_path / "t.json").write_text(json.dumps(data))
    write_csv(tmp_path / "t.csv", data)
    tables = [read_table(str(tmp_path / name), sn) for name in ("t.yaml", "t.json", "t.csv")]
    for t in tables[1:]:
        assert t.fixed == tables[0].fixed and all(torch.equal(t.costs[ct], tables[0].costs[ct]) for ct in CELL_TYPES)
    t = tables[0]
    one_hot = sn.one_hot_weights(parse_mobilenet(ARCH))
    chosen = sum(data[ct][e][op] for ct, ops in zip(CELL_TYPES, ARCH[10:].split("|"))
                 for e, op in enumerate(ops.split(",")) if op != "zero")
    assert t.expected(one_hot).item() == pytest.approx(2.5 + chosen)
    uniform = {ct: enabled_probs(torch.zeros_like(a), sn.mask(ct)) for ct, a in sn.alphas.items()}
    means = sum(sum(row.values()) / sn.mask(ct)[e].sum().item() for ct in CELL_TYPES for e, row in enumerate(data[ct]))
    assert t.expected(uniform).item() == pytest.approx(2.5 + means)


def test_latency_from_flops_is_the_discrete_networks_count():
    """With a one-hot path, E[FLOPs] = FLOPs counted on the discrete network of that path."""
    space = get("mobilenet", **TINY)
    sn = tiny_supernet()
    table = flops_table(sn, (1, 8, 8))
    arch = parse_mobilenet(ARCH)
    assert table.costs["stage2"][1, ZERO] == 0 and table.costs["stage1"][0, 5] > table.costs["stage1"][0, 0] > 0
    assert table.expected(sn.one_hot_weights(arch)).item() == count_flops(space.network(arch), (1, 8, 8)).total
    assert sn.training  # mode restored


@pytest.mark.parametrize("name, text, words", [
    ("t.yaml", "stage1: [{mb3_k3: 1}]", "no entry for stage1 layer 0 op mb6_k3"),
    ("t.yaml", "stage9: []", "unknown stage 'stage9'"),
    ("t.yaml", "stage2: [{}, {}, {}]", "stage2 has 2 layers in this space; the table gives 3"),
    ("t.yaml", "stage1: [{mb3_k9: 1}]", "unknown op 'mb3_k9'"),
    ("t.yaml", "stage1: [{mb3_k3: -1}]", "expected a finite number >= 0"),
    ("t.yaml", "stage1: [{mb3_k3: fast}]", "stage1 layer 0 op mb3_k3: expected a number, got 'fast'"),
    ("t.yaml", "stage1: {mb3_k3: 1}", "stage1 must list one mapping"),
    ("t.yaml", "[1, 2]", "expected a mapping of stage names"),
    ("t.yaml", "stage1: [{mb3_k3: 1", "is not valid YAML"),
    ("t.csv", "stage,op,latency\n", "missing: layer"),
    ("t.csv", "stage,layer,op,latency\nstage1,x,mb3_k3,1\n", "line 2: layer must be a 0-based index"),
    ("t.csv", "stage,layer,op,latency\nstage1,0,mb3_k3,1\nstage1,0,mb3_k3,2\n", "line 3: a second entry"),
    ("t.csv", "stage,layer,op,latency\nstage1,0,mb3_k3,slow\n", "line 2: expected a number"),
    ("missing.yaml", None, "does not exist"),
])
def test_bad_latency_tables_are_one_line_errors(tmp_path, name, text, words):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=words) as e:
        read_table(str(tmp_path / name), tiny_supernet())
    assert "\n" not in str(e.value)


def test_latency_regulariser_forms_and_it_moves_alpha_to_cheaper_ops(tmp_path):
    sn = tiny_supernet()
    loss = torch.tensor(1.2)
    q = {ct: enabled_probs(a, sn.mask(ct)).float() for ct, a in sn.alphas.items()}
    x = batch(0)[0]
    forms = {"add": lambda e: 1.2 + 0.1 * e, "add-relative": lambda e: 1.2 + 0.1 * (e - 3e5) / 3e5,
             "mul-log": lambda e: 0.2 * 1.2 * (math.log(e) / math.log(3e5)) ** 0.3}
    for form, f in forms.items():
        opt = make(sn, latency=form, latency_target=3e5)
        total, record = opt.regularised(loss, q, x)
        e = opt.costs.expected(q).item()
        assert total.item() == pytest.approx(f(e), rel=1e-6) and record["arch_loss"] == pytest.approx(total.item())
    opt = make(tiny_supernet(), latency="add", latency_lambda=1e-3)
    first = opt.step(batch(1), batch(2), epoch=0)["expected_latency"]
    for k in range(4):
        last = opt.step(batch(1), batch(2), epoch=0)["expected_latency"]
    assert last < first


@pytest.mark.parametrize("options, words", [
    ({"paths": "three"}, "paths must be two or full"),
    ({"latency": "mul-log"}, "latency_target must be a number > 0"),
    ({"latency_table": "t.yaml"}, "latency_table must be unset while latency is none"),
    ({"warmup_epochs": 9}, r"warmup_epochs must be in \[0, search.epochs=4\]"),
    ({"update_every": 0}, "update_every must be >= 1"),
    ({"label_smoothing": 1.0}, "label_smoothing must be in"),
])
def test_bad_options_are_user_errors(options, words):
    with pytest.raises(UserError, match=words):
        make(tiny_supernet(), **options)


def test_latency_on_a_space_without_single_edge_layers_needs_a_table():
    sn = get("nb201", C=4, N=1, in_channels=1, num_classes=3).supernet()
    opt = make(sn, latency="add")
    with pytest.raises(UserError, match="give search.options.latency_table"):
        opt.step(batch(1), batch(2), epoch=0)


# -- state and resume ------------------------------------------------------------------------------------------------

def test_state_round_trip_continues_bit_identically():
    """Checkpoint after 3 steps (supernet, optimizer, RNG), continue 3 more; a fresh optimizer loading that
    checkpoint reproduces the same α, weights and schedule position."""
    sn = tiny_supernet()
    opt = make(sn, update_every=2)
    for k in range(3):
        opt.step(batch(k), batch(10 + k), epoch=0)
    saved = copy.deepcopy((sn.state_dict(), opt.state_dict(), torch.get_rng_state()))
    for k in range(3, 6):
        opt.step(batch(k), batch(10 + k), epoch=0)
    opt.end_epoch(0)
    sn2 = tiny_supernet()
    sn2.load_state_dict(saved[0])
    opt2 = make(sn2, update_every=2)
    opt2.load_state_dict(saved[1])
    assert opt2.apply_hyperparameters() == [] and opt2.batch_index == 3
    torch.set_rng_state(saved[2])
    for k in range(3, 6):
        opt2.step(batch(k), batch(10 + k), epoch=0)
    opt2.end_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(sn.state_dict().values(), sn2.state_dict().values()))
    assert opt2.lr == opt.lr and opt2.scheduler.last_epoch == 1


def cli_search(tmp_path, *extra, epochs=2, n_train=128):
    data = tiny_idx_dir(tmp_path / "data", n_train=n_train, n_test=16)
    run = tmp_path / "run"
    assert main(["search", "--out", str(run), "--selector", "magnitude", f"data.data_dir={data}",
                 "space.name=mobilenet", "space.resolution=32", "space.width_mult=0.25",
                 "space.stage_layers=[1,2,1,1,1,1]", "data.batch_size=16", f"search.epochs={epochs}", "threads=1",
                 "search.optimizer=proxylessnas", "search.a_beta1=0", *extra]) == 0
    return run, [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cli_search_records_alpha_metrics_over_the_alpha_steps_only(tmp_path, capsys):
    """One epoch of 2 steps, α after the second: the epoch's valid_loss is that step's, not halved over both."""
    run, records = cli_search(tmp_path, "search.options.update_every=2", "search.options.skip_first_alpha_epoch=false",
                              epochs=1, n_train=64)
    assert records[0]["valid_loss"] > 0.5 and math.isfinite(records[0]["search_valid_acc"])
    text = json.loads((run / "result.json").read_text())["architecture"]["text"]
    assert parse_mobilenet(text).space == "mobilenet" and f"architecture (magnitude): {text}" in capsys.readouterr().out


def test_epoch_means_divide_each_metric_by_the_steps_that_reported_it():
    meters = {"train_loss": 6.0, "n/train_loss": 3, "valid_loss": 1.5, "n/valid_loss": 1, "n": 3, "seconds": 9.0}
    assert epoch_means(meters) == {"train_loss": 2.0, "valid_loss": 1.5}
    assert epoch_means({"train_loss": 6.0, "n": 3}) == {"train_loss": 2.0}  # an older checkpoint's meters


@pytest.mark.slow
def test_cli_search_then_every_selector(tmp_path, capsys):
    run, records = cli_search(tmp_path, "search.options.update_every=2")
    assert "valid_loss" not in records[0] and math.isfinite(records[1]["valid_loss"])  # α from the second epoch
    assert main(["select", str(run), "--selector", "perturbation,shapley,influence",
                 "select.options={perturbation: {tune_epochs: 0, valid_batches: 1}, "
                 "shapley: {permutations: 1, batch_size: 16}, influence: {batches: 1}}"]) == 0
    assert {p.stem for p in (run / "selections").glob("*.json")} >= {"magnitude", "perturbation", "shapley",
                                                                     "influence"}


@pytest.mark.slow
def test_search_killed_and_resumed_equals_an_uninterrupted_one(tmp_path):
    from killharness import search_survives_kills

    data = tiny_idx_dir(tmp_path / "data")
    args = [f"data.data_dir={data}", "space.name=mobilenet", "space.resolution=32", "space.width_mult=0.25",
            "space.stage_layers=[1,2,1,1,1,1]", "data.batch_size=16", "search.epochs=4", "threads=1",
            "search.checkpoint_every=1", "search.optimizer=proxylessnas", "search.options.update_every=3",
            "search.options.warmup_epochs=1", "search.options.skip_first_alpha_epoch=false",
            "search.options.latency=mul-log",
            "search.options.latency_target=300000"]
    search_survives_kills(tmp_path, args, kills=2, seed=0, spread=12)


def test_the_paper_config_loads_and_builds_the_optimizer():
    cfg = load_config(CONFIG)
    s = cfg.search
    assert (s.optimizer, s.epochs, s.a_lr, s.a_beta1, s.a_weight_decay) == ("proxylessnas", 160, 1e-3, 0.0, 0.0)
    assert cfg.space.name == "mobilenet" and cfg.data.dataset == "imagenet"
    opt = OPTIMIZERS.get("proxylessnas")(tiny_supernet(), s, steps_per_epoch=10)
    assert opt.options.warmup_epochs == 40 and opt.options.paths == "two" and opt.lr == pytest.approx(0.05)
    assert opt.scheduler.lr_at(40) == pytest.approx(s.w_lr)
