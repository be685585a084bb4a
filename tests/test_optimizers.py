"""Supernet optimizers beyond first-order DARTS: second-order DARTS (against the exact hypergradient), RSPS, GDAS,
SNAS, on a tiny NAS-Bench-201 supernet."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from archselect.config import SearchConfig
from archselect.optimizers import OPTIMIZERS
from archselect.optimizers.darts2 import unrolled_alpha_grads
from archselect.optimizers.gumbel import GDAS, SNAS, gdas_sample, linear_tau
from archselect.spaces.sampling import connected, sample_path
from archselect.spaces.nb201 import EDGES, NB201Space


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def tiny_supernet(dtype=torch.float32, alpha_init_std=1e-3):
    torch.manual_seed(0)
    sn = NB201Space(C=4, N=1, in_channels=1, num_classes=3, alpha_init_std=alpha_init_std).supernet()
    return sn.to(dtype).train()


def batch(seed, dtype=torch.float32, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def make(name, sn, epochs=4, **options):
    cfg = SearchConfig(optimizer=name, epochs=epochs, options=options, w_lr=0.1, a_lr=0.05)
    return OPTIMIZERS.get(name)(sn, cfg, steps_per_epoch=2)


# -- second-order DARTS ------------------------------------------------------------------------------------------------

def exact_hypergradient(sn, train, valid, xi, mu, wd, buffers):
    """d/dα L_val(w'(α), α) with w'(α) = w − ξ(μv + ∇_w L_train(w, α) + λw), by autograd through the step."""
    params = sn.weight_parameters()
    names = {id(p): n for n, p in sn.named_parameters()}
    loss = F.cross_entropy(sn(train[0], sn.mixing_weights()), train[1])
    g = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True, materialize_grads=True)
    unrolled = {names[id(p)]: p - xi * (mu * buffers[p] + gi + wd * p) for p, gi in zip(params, g)}
    val = F.cross_entropy(functional_call(sn, unrolled, (valid[0], sn.mixing_weights())), valid[1])
    return torch.autograd.grad(val, sn.arch_parameters())[0]


def test_second_order_gradient_matches_autograd_through_the_unrolled_step():
    """Float64, real supernet (BN in train mode, momentum and weight decay in the virtual step): with a small
    finite-difference radius the DARTS formula equals the exact hypergradient to 1e-6 relative error. The official
    radius 0.01 is a tiny network's worst case here: it crosses ReLU kinks, so it is not asserted."""
    sn = tiny_supernet(torch.float64, alpha_init_std=0.5)
    train, valid = batch(1, torch.float64), batch(2, torch.float64)
    torch.manual_seed(3)
    buffers = {p: 0.1 * torch.randn_like(p) for p in sn.weight_parameters()}
    xi, mu, wd = 0.1, 0.9, 3e-4
    exact = exact_hypergradient(sn, train, valid, xi, mu, wd, buffers)
    grads, loss, _ = unrolled_alpha_grads(sn, train, valid, xi, mu, wd, buffers, radius=1e-5)
    assert (grads[0] - exact).norm() / exact.norm() < 1e-6
    first_order = torch.autograd.grad(F.cross_entropy(sn(valid[0], sn.mixing_weights()), valid[1]),
                                      sn.arch_parameters())[0]
    assert (first_order - exact).norm() / exact.norm() > 0.1  # the second-order term matters here
    assert torch.isfinite(loss)


def test_second_order_step_leaves_weights_and_state_untouched_before_its_weight_step():
    sn = tiny_supernet()
    opt = make("darts-2nd", sn)
    before = {k: v.clone() for k, v in sn.state_dict().items() if not k.startswith("alphas.")}
    opt.unrolled_arch_step(batch(1), batch(2))
    after = sn.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k]) and "running" not in k
               and "num_batches" not in k]
    assert changed == []  # only BN statistics move (the forward passes run in train mode)


# -- every optimizer: two steps ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["darts-2nd", "gdas", "snas", "rsps"])
def test_two_steps_move_weights_and_alpha_as_the_method_says(name):
    sn = tiny_supernet()
    opt = make(name, sn)
    alpha0 = sn.alphas["cell"].detach().clone()
    weights0 = [p.detach().clone() for p in sn.weight_parameters()]
    for k in range(2):
        out = opt.step(batch(10 + k), batch(20 + k), epoch=0)
        assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    moved = any(not torch.equal(a, b) for a, b in zip(weights0, sn.weight_parameters()))
    assert moved
    if name == "rsps":
        assert torch.equal(sn.alphas["cell"], alpha0)
    else:
        assert (sn.alphas["cell"] - alpha0).abs().max() > 1e-4
    state = opt.state_dict()
    fresh = make(name, tiny_supernet())
    fresh.load_state_dict(state)


def test_snas_initialises_alpha_around_one():
    sn = tiny_supernet()
    make("snas", sn)
    a = sn.alphas["cell"]
    assert abs(a.mean().item() - 1.0) < 0.01 and 0.003 < a.std().item() < 0.02
    sn2 = tiny_supernet()
    make("snas", sn2, alpha_init_mean=None)
    assert sn2.alphas["cell"].abs().max() < 0.01


# -- GDAS --------------------------------------------------------------------------------------------------------------

def test_gdas_computes_only_the_sampled_op_per_edge(monkeypatch):
    """Both forward passes of a GDAS step (α step and weight step) ask each edge for at most one op. Convolutions run
    fused per node rather than through their modules, so the spy sits where each node hands its edges their ops."""
    import archselect.spaces.mixed as mixed

    sn = tiny_supernet()
    opt = make("gdas", sn)
    asked, real = [], mixed.fan_out

    def spy(x, relu_x, outgoing):
        asked.extend(len(plan) for _, plan in outgoing)
        return real(x, relu_x, outgoing)

    monkeypatch.setattr(mixed, "fan_out", spy)
    opt.step(batch(1), batch(2), epoch=0)
    assert len(asked) == 2 * 3 * 6 and max(asked) == 1  # two passes x three cells (N=1 per stage) x six edges


def test_gdas_hard_weights_are_one_hot_with_gradient_to_every_alpha():
    torch.manual_seed(0)
    alpha = torch.randn(6, 5, requires_grad=True)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0, 2] = False
    h, index = gdas_sample(alpha, mask, tau=1.0)
    assert torch.allclose(h.detach(), F.one_hot(index, 5).float(), atol=1e-6)
    assert index[0] != 2  # a disabled op is never sampled
    (h[torch.arange(6), index] * torch.arange(1.0, 7.0)).sum().backward()
    assert (alpha.grad[1:] != 0).all() and alpha.grad[0, 2] == 0


def test_gdas_samples_follow_softmax_alpha_at_tau_one():
    """log_softmax(α) + Gumbel, argmax: the sample frequencies are softmax(α) (Gumbel-max trick)."""
    torch.manual_seed(0)
    alpha = torch.tensor([[0.0, 1.0, 2.0]]).expand(4000, 3)
    _, index = gdas_sample(alpha, torch.ones(4000, 3, dtype=torch.bool), tau=1.0)
    freq = torch.bincount(index, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.softmax(alpha[0], 0), atol=0.03)


# -- τ schedule --------------------------------------------------------------------------------------------------------

def test_tau_schedules():
    gdas = [linear_tau(e, 5, 10.0, 0.1, reach_min=True) for e in range(5)]
    assert gdas == pytest.approx([10.0, 7.525, 5.05, 2.575, 0.1])
    snas = [linear_tau(e, 4, 1.0, 0.1, reach_min=False) for e in range(4)]
    assert snas == pytest.approx([1.0, 0.775, 0.55, 0.325])
    assert linear_tau(9, 5, 1.0, 0.03, reach_min=False) == 0.03 and linear_tau(0, 1, 10.0, 0.1, True) == 10.0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # epochs ended, no step
def test_tau_position_is_checkpointed_and_advances_per_epoch():
    sn = tiny_supernet()
    opt = make("gdas", sn, epochs=5)
    assert isinstance(opt, GDAS) and opt.tau == 10.0
    opt.end_epoch(0)
    opt.end_epoch(1)
    assert opt.tau == pytest.approx(5.05)
    restored = make("gdas", tiny_supernet(), epochs=5)
    restored.load_state_dict(opt.state_dict())
    assert restored.tau == pytest.approx(5.05) and restored.lr == pytest.approx(opt.lr)
    out = restored.step(batch(1), batch(2), epoch=2)
    assert out["tau"] == pytest.approx(5.05)
    snas = make("snas", tiny_supernet(), epochs=4)
    assert isinstance(snas, SNAS) and (snas.tau, snas.options.tau_min) == (1.0, 0.03)


def test_bad_tau_options_are_user_errors():
    from archselect.errors import UserError

    with pytest.raises(UserError, match="tau_min"):
        make("gdas", tiny_supernet(), tau_min=0.0)
    with pytest.raises(UserError, match="unknown config key"):
        make("snas", tiny_supernet(), temperature=1.0)


# -- RSPS --------------------------------------------------------------------------------------------------------------

def gm_check_connect(none):
    """GM-NAS' NB201 rule, written out as the four input-to-output paths of the cell (edges 1<-0, 2<-0, 2<-1, 3<-0,
    3<-1, 3<-2 are indices 0..5)."""
    ok = [not n for n in none]
    return ok[3] or (ok[1] and ok[5]) or (ok[0] and ok[4]) or (ok[0] and ok[2] and ok[5])


def test_connectivity_matches_the_nb201_rule_for_every_none_pattern():
    for none in itertools.product([False, True], repeat=6):
        assert connected(EDGES, [not n for n in none]) == gm_check_connect(none), none


def test_rsps_paths_are_one_hot_connected_and_respect_the_mask():
    sn = tiny_supernet()
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[4, :3] = False  # edge 3<-1 may only take nor_conv_3x3 or avg_pool_3x3
    sn.set_mask("cell", mask)
    torch.manual_seed(0)
    seen_none = 0
    for _ in range(300):
        w = sample_path(sn)["cell"]
        assert torch.equal(w.sum(1), torch.ones(6)) and set(w.unique().tolist()) == {0.0, 1.0}
        index = w.argmax(1)
        assert index[4] in (3, 4)
        none = (index == 0).tolist()
        seen_none += any(none)
        assert gm_check_connect(none)
    assert seen_none > 50  # `none` is drawn, only disconnected cells are redrawn


def test_rsps_trains_only_the_sampled_path():
    sn = tiny_supernet()
    opt = make("rsps", sn)
    torch.manual_seed(5)
    plans = sn.plans(opt.train_weights())["cell"]
    assert all(len(p) <= 1 for p in plans)


# -- the DARTS space ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["darts-2nd", "gdas", "snas", "rsps"])
def test_every_optimizer_runs_on_the_darts_space(name):
    """R-DARTS S3 (none, skip_connect, sep_conv_3x3), two cell types, 3 cells: one step moves α as the method says."""
    from archselect.spaces import SPACES

    torch.manual_seed(0)
    sn = SPACES.get("darts-s3")(C=4, N=3, in_channels=1, num_classes=3).supernet().train()
    opt = make(name, sn)
    alphas0 = {ct: a.detach().clone() for ct, a in sn.alphas.items()}
    out = opt.step(batch(1), batch(2), epoch=0)
    assert torch.isfinite(torch.tensor(out["train_loss"]))
    moved = {ct: not torch.equal(a, alphas0[ct]) for ct, a in sn.alphas.items()}
    assert moved == {"normal": name != "rsps", "reduce": name != "rsps"}
