"""Retraining from scratch (`archselect train`) and the parameter / FLOPs counters."""
import csv
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archselect.arch import load_architecture, parse_nb201
from archselect.cli import main
from archselect.errors import UserError
from archselect.evaluate.flops import count_flops, count_parameters
from archselect.evaluate.train import TrainRun
from archselect.pipeline import show
from archselect.pipeline import train as train_command
from archselect.files import load_latest_checkpoint
from archselect.spaces import SPACES
from archselect.spaces.nb201 import NB201Space

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
TINY = ["data.dataset=digits", "train.C=4", "train.N=1", "train.batch_size=32", "train.subset=128",
        "data.eval_batch_size=360", "threads=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


# -- counters ----------------------------------------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        x = self.pool(self.bn(self.conv(x)))             # 2 x 2 x 2 after the pool
        x = F.max_pool2d(x, 3, 1, 1)                     # functional pooling is counted too
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_flop_counter_on_a_hand_computed_net():
    count = count_flops(Tiny(), (1, 4, 4))
    assert count.by_kind == {
        "conv": 4 * 4 * 2 * (1 * 3 * 3),   # output elements x (C_in x kernel); the conv bias is not counted
        "bn": 2 * (2 * 4 * 4),             # scale + shift per element, reported apart
        "pool": 2 * 2 * 2 * 4 + 2 * 2 * 2 * 9 + 2 * 2 * 2,  # avg 2x2, max 3x3, global average (one per input)
        "linear": 3 * 2 + 3,               # out x in, plus the bias
    }
    assert count.total == 288 + 32 + 72 + 8 + 9
    assert count_parameters(Tiny()) == 18 + 2 + 4 + 9


def test_nb201_params_match_the_benchmark_and_flops_differ_by_its_elementwise_work(nb201_csv):
    """Parameters: exact. FLOPs: the table also counts 3 per output element of every ReLU-conv-BN op in the cells
    (5 cells per stage: 16x32x32 + 32x16x16 + 64x8x8 elements each) and one constant for the rest of the net, and
    counts once per edge an average pool that the cells here compute once per node."""
    rows = [r for r in csv.DictReader(open(nb201_csv)) if r["params_m"]][:400:25]
    space = NB201Space(C=16, N=5, in_channels=3, num_classes=10)
    elements = 5 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8)
    rest = []
    for r in rows:
        arch = parse_nb201(r["arch"])
        net = space.network(arch)
        assert count_parameters(net) / 1e6 == pytest.approx(float(r["params_m"]), abs=1e-6)
        edges = arch.cell("cell").edges
        convs = sum(e.op.startswith("nor_conv") for e in edges)
        pools = [sum(e.op == "avg_pool_3x3" for e in edges if e.src == node) for node in range(3)]
        shared_pools = sum(n - 1 for n in pools if n > 1)
        table = float(r["flops_m"]) * 1e6
        rest.append(table - count_flops(net, (3, 32, 32)).total - 3 * elements * convs - 9 * elements * shared_pools)
    assert max(rest) - min(rest) < 150  # the table rounds to 100 FLOPs
    assert rest[0] == pytest.approx(132_200, abs=200)


def test_darts_v2_network_has_the_papers_parameter_count():
    net = SPACES.get("darts")().network(load_architecture(DARTS_V2), C=36, layers=20, auxiliary=True)
    assert count_parameters(net) == 3_349_342  # DARTS' reported 3.3M, auxiliary head left out
    flops = count_flops(net, (3, 32, 32)).by_kind
    assert flops["conv"] + flops["linear"] == 528_359_050  # papers: ~528M; pools (~1M) depend on sharing


# -- retraining --------------------------------------------------------------------------------------------------------

def read_metrics(run):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_retraining_writes_result_metrics_and_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = train_command(ARCH, out=str(run), overrides=[*TINY, "train.epochs=1"])
    saved = json.loads((run / "result.json").read_text())
    assert saved["test_acc"] == result["test_acc"] and 0.0 <= result["test_acc"] <= 1.0
    assert saved["architecture"]["text"] == ARCH and saved["epochs"] == 1 and saved["test_images"] == 360
    assert saved["params"] == count_parameters(NB201Space(4, 1, 1, 10).network(parse_nb201(ARCH)))
    assert saved["flops"] > 0 and saved["input_shape"] == [1, 8, 8] and saved["train_images"] == 128
    summary = show(run)  # `archselect show` on a retraining: its own epochs and result, never the search's fields
    assert f"retraining of {ARCH}" in summary and "epochs done: 1/1" in summary
    assert f"test accuracy {100 * result['test_acc']:.2f}%" in summary
    assert [m["epoch"] for m in read_metrics(run)] == [0]
    assert load_latest_checkpoint(run / "checkpoints", "train")["epoch"] == 1
    assert json.loads((run / "architecture.json").read_text())["text"] == ARCH


def test_kill_and_resume_ends_exactly_where_an_uninterrupted_run_does(tmp_path, monkeypatch):
    args = [*TINY, "train.epochs=3", "train.eval_every=2"]
    whole = train_command(ARCH, out=str(tmp_path / "whole"), overrides=args)

    real, calls = TrainRun.train_step, {"n": 0}

    def killed(self, x, y):  # 4 steps per epoch: die in the middle of the second epoch
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(self, x, y)

    monkeypatch.setattr(TrainRun, "train_step", killed)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_command(ARCH, out=str(cut), overrides=args)
    assert [m["epoch"] for m in read_metrics(cut)] == [0]
    monkeypatch.setattr(TrainRun, "train_step", real)
    resumed = train_command(ARCH, resume=str(cut))

    same = ("test_acc", "test_loss", "params", "flops", "epochs")
    assert {k: resumed[k] for k in same} == {k: whole[k] for k in same}
    assert read_metrics(cut) == read_metrics(tmp_path / "whole")
    assert [("test_acc" in m) for m in read_metrics(cut)] == [False, True, True]
    a = load_latest_checkpoint(cut / "checkpoints", "train")["model"]
    b = load_latest_checkpoint(tmp_path / "whole" / "checkpoints", "train")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_kill_right_after_the_run_directory_is_made_leaves_a_resumable_run(tmp_path, monkeypatch):
    """The architecture is recorded before config.yaml makes the directory a run: a kill between the two used to
    leave a run that --resume refused (no architecture to check ARCH against)."""
    from archselect import runs

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.RunDir, "record_manifest", killed)  # written right after config.yaml
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_command(ARCH, out=str(cut), overrides=[*TINY, "train.epochs=1"])
    monkeypatch.undo()
    assert (cut / "config.yaml").is_file() and not list(cut.glob("checkpoints/*"))
    assert train_command(ARCH, resume=str(cut))["epochs"] == 1


def test_darts_retraining_uses_the_auxiliary_head_and_ramps_drop_path(tmp_path, monkeypatch):
    seen = {"aux": 0}
    from archselect.spaces.darts import DARTSNetwork

    real = DARTSNetwork.forward_aux

    def spy(self, x):
        logits, aux = real(self, x)
        seen["aux"] += aux is not None
        return logits, aux

    monkeypatch.setattr(DARTSNetwork, "forward_aux", spy)
    run = tmp_path / "run"
    result = train_command(DARTS_V2, out=str(run), overrides=[
        "data.dataset=digits", "train.C=4", "train.N=3", "train.batch_size=64", "train.subset=128", "train.epochs=2",
        "train.auxiliary_weight=0.4", "train.drop_path=0.2", "train.cutout=4", "train.grad_clip=5", "threads=1"])
    assert seen["aux"] == 4  # 2 epochs x 2 steps, all with auxiliary logits
    assert [m["drop_path"] for m in read_metrics(run)] == [0.0, pytest.approx(0.1)]
    assert result["space"] == "darts" and result["params"] < sum(
        p.numel() for p in SPACES.get("darts")().network(load_architecture(DARTS_V2), C=4, layers=3,
                                                        auxiliary=True).parameters())


# -- the command -------------------------------------------------------------------------------------------------------

def test_train_command_line_and_its_errors(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), ARCH, *TINY, "train.epochs=1"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    arch_file = tmp_path / "arch.json"
    arch_file.write_text((run / "result.json").read_text())  # a result.json names its architecture

    cases = [
        (["train", "--out", str(run), ARCH], "already holds a run"),
        (["train", "--resume", str(run), "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"], "retrains"),
        (["train", "--out", str(tmp_path / "x"), ARCH, *TINY, "train.drop_path=0.2"], "no auxiliary head"),
        (["train", "--out", str(tmp_path / "y"), "not-an-arch"], "neither an architecture file"),
        (["train", "--out", str(tmp_path / "z"), ARCH, "train.lr=-1"], "train.lr"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["train", "--resume", str(run), str(arch_file)]) == 0  # nothing left to train: the same result
    assert "resumed at epoch 2" in capsys.readouterr().out


def test_subset_larger_than_the_split_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="train.subset"):
        train_command(ARCH, out=str(tmp_path / "r"), overrides=[*TINY, "train.subset=100000"])
