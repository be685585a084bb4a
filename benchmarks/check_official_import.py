"""The import mappings against the official code itself: build each official supernet (from a checkout of the
official repository, on the CPU), give it random weights and α, save it as its search script does, import it with
archselect's mapping, and print the largest logit difference (float64; softmax(α) mixing and one one-hot path, BN in
train and eval mode).

    python benchmarks/check_official_import.py --darts-pt PATH/darts-pt --darts PATH/darts

Nothing of the official code is copied: it is imported from the checkout given (fetch it yourself). Its CUDA calls
are made no-ops and torchvision (imported but unused by the models) is stubbed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import torch

import archselect as asel
from archselect.interop import checkpoints, official


def _cpu_only() -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official models put α on CUDA
    torch.nn.Module.cuda = lambda self, *a, **k: self
    for name in ("torchvision", "torchvision.transforms", "torchvision.datasets", "torchvision.datasets.utils"):
        stub = types.ModuleType(name)
        stub.__path__ = []  # a package, so that its submodules import
        stub.VisionDataset = object
        sys.modules.setdefault(name, stub)
    sys.modules["torchvision.datasets"].utils = sys.modules["torchvision.datasets.utils"]


def _randomise(model: torch.nn.Module, alphas: list[torch.Tensor], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * 0.5)
        for a in alphas:
            a.copy_(torch.randn(a.shape, generator=g))


def _import(fmt: str, ckpt: dict, **options):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "checkpoint.pth.tar"
        torch.save(ckpt, path)
        imp = official.FORMATS[fmt](checkpoints.load(path), path, options)
        net = asel.spaces.get(imp.space, in_channels=imp.in_channels, num_classes=imp.num_classes,
                              **imp.options).supernet()
        official.load_into(imp, net, path)
    return imp, net


def _differences(model, net, x) -> list[float]:
    """max |logit difference| with softmax(α), BN train then eval."""
    out = []
    for train in (True, False):
        model.train(train), net.train(train)
        with torch.no_grad():
            out.append(float((model(x) - net(x)).abs().max()))
    return out


def nb201(root: Path, args) -> tuple[str, list[float]]:
    sys.path.insert(0, str(root))
    from nasbench201.search_model_darts import TinyNetworkDarts
    ops = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    hp = types.SimpleNamespace(learning_rate=0.025, momentum=0.9, weight_decay=3e-4)
    model = TinyNetworkDarts(args.C, args.N, 4, 10, torch.nn.CrossEntropyLoss(), ops, hp)
    _randomise(model, model.arch_parameters(), 0)
    ckpt = {"epoch": 50, "state_dict": model.state_dict(), "alpha": model.arch_parameters()}
    imp, net = _import("darts-pt-nb201", ckpt)
    x = torch.randn(8, 3, 32, 32)
    diffs = _differences(model, net, x)
    one_hot = torch.zeros(6, 5)
    one_hot[torch.arange(6), torch.tensor([3, 1, 2, 3, 4, 3])] = 1.0
    model.eval(), net.eval()
    model._arch_parameters.data.copy_(torch.where(one_hot > 0, 0.0, -1e9))  # softmax -> exactly one-hot
    with torch.no_grad():
        diffs.append(float((model(x) - net(x, {"cell": one_hot})).abs().max()))
    return f"darts-pt-nb201 -> nb201 C={imp.options['C']} N={imp.options['N']}", diffs


def darts_pt_darts(root: Path, space: str, args) -> tuple[str, list[float]]:
    sys.path.insert(0, str(root))
    from sota.cnn.model_search import Network
    from sota.cnn.spaces import spaces_dict
    hp = types.SimpleNamespace(learning_rate=0.025, momentum=0.9, weight_decay=3e-4)
    model = Network(args.C, 10, args.layers, torch.nn.CrossEntropyLoss(), spaces_dict[space], hp)
    _randomise(model, model.arch_parameters(), 1)
    if space == "s4":  # noise ops draw random numbers: give them weight exactly 0 (both codes then skip them)
        for a in model.arch_parameters():
            a.data[:, 0] = -1e9
    ckpt = {"epoch": 50, "state_dict": model.state_dict(), "alpha": model.arch_parameters()}
    imp, net = _import("darts-pt-darts", ckpt, search_space=space)
    return f"darts-pt-darts {space} -> {imp.space}", _differences(model, net, torch.randn(4, 3, 32, 32))


def darts(root: Path, args) -> tuple[str, list[float]]:
    sys.path.insert(0, str(root / "cnn"))
    import model_search
    model = model_search.Network(args.C, 10, args.layers, torch.nn.CrossEntropyLoss())
    alphas = model.arch_parameters()
    _randomise(model, alphas, 2)
    state = model.state_dict()  # DARTS saves weights.pt (the state dict) and logs α; here α rides along
    imp, net = _import("darts", {"state_dict": state, "alpha": alphas})
    return f"darts -> {imp.space}", _differences(model, net, torch.randn(4, 3, 32, 32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--darts-pt", type=Path, help="a checkout of github.com/ruocwang/darts-pt")
    p.add_argument("--darts", type=Path, help="a checkout of github.com/quark0/darts")
    p.add_argument("--C", type=int, default=4)
    p.add_argument("--N", type=int, default=1)
    p.add_argument("--layers", type=int, default=5)
    args = p.parse_args()
    _cpu_only()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    rows = []
    if args.darts_pt:
        rows.append(nb201(args.darts_pt, args))
        for space in ("s1", "s2", "s3", "s4", "s5"):
            rows.append(darts_pt_darts(args.darts_pt, space, args))
    if args.darts:
        rows.append(darts(args.darts, args))
    print(f"{'official layout -> archselect space':<40} {'softmax, BN train':>18} {'softmax, BN eval':>17} "
          f"{'one-hot, eval':>14}")
    for name, d in rows:
        cells = [f"{v:.1e}" if v == v else "-" for v in d] + ["-"] * (3 - len(d))
        print(f"{name:<40} {cells[0]:>18} {cells[1]:>17} {cells[2]:>14}")


if __name__ == "__main__":
    main()
