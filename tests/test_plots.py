"""Report figures on a fake run directory (config, metrics with α, selections): every PNG is written, non-trivial
and readable; a run without selections still gets its α plots; missing matplotlib is a clear UserError."""
import json
import sys

import pytest
import torch

pytest.importorskip("matplotlib")  # the optional `plots` extra
from PIL import Image  # noqa: E402  (a matplotlib dependency)

from archselect.arch import parse_nb201
from archselect.cli import main
from archselect.config import RunConfig, dump_yaml
from archselect.errors import UserError
from archselect.reporting import plots
from archselect.selection import Selection
from archselect.spaces.darts import DARTSSpace
from archselect.spaces.nb201 import NB201Space

ARCH = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def fake_run(root, space="nb201", epochs=3, selectors=("magnitude", "influence")):
    cfg = RunConfig()
    cfg.space.name = space
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(dump_yaml(cfg))
    sp = NB201Space() if space == "nb201" else DARTSSpace()
    g = torch.Generator().manual_seed(0)
    with open(root / "metrics.jsonl", "w") as f:
        for epoch in range(epochs):
            alpha = {ct: torch.softmax(torch.randn(len(sp.edges(ct)), len(sp.op_names), generator=g) * 0.1 * epoch,
                                       -1).tolist() for ct in sp.cell_types}
            f.write(json.dumps({"epoch": epoch, "search_valid_acc": 0.5, "seconds": 1.0, "alpha": alpha}) + "\n")
    (root / "selections").mkdir()
    for i, name in enumerate(selectors):
        scores = {ct: torch.randn(len(sp.edges(ct)), len(sp.op_names), generator=g) * 10.0 ** (-2 * i)
                  for ct in sp.cell_types}
        arch = parse_nb201(ARCH) if space == "nb201" else sp.derive(scores)
        sel = Selection(name, arch, {ct: s.tolist() for ct, s in scores.items()})
        (root / "selections" / f"{name}.json").write_text(json.dumps(sel.to_dict()))
    return root


def assert_pngs(paths, expected):
    assert sorted(p.name for p in paths) == sorted(expected)
    for p in paths:
        assert p.parent.name == "report" and p.stat().st_size > 5000
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150


@pytest.mark.parametrize("engine", ["matplotlib", "dot"])
def test_nb201_run_report(tmp_path, engine):
    if engine == "dot" and plots._dot_png("digraph { a -> b }\n") is None:
        pytest.skip("Graphviz dot is not installed")
    paths = plots.plot_run(fake_run(tmp_path / "run"), engine)
    assert_pngs(paths, ["alpha_cell.png", "scores_cell.png", "cell_magnitude.png", "cell_influence.png"])


def test_darts_run_report_has_one_figure_per_cell_type(tmp_path):
    paths = plots.plot_run(fake_run(tmp_path / "run", "darts", selectors=("magnitude",)), "matplotlib")
    assert_pngs(paths, ["alpha_normal.png", "alpha_reduce.png", "scores_normal.png", "scores_reduce.png",
                        "cell_magnitude.png"])


def test_report_cli_without_selections_plots_alpha(tmp_path, capsys):
    run = fake_run(tmp_path / "run", selectors=())
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert [p for p in printed if p.endswith(".png")] == [str(run / "report" / "alpha_cell.png")]
    assert sorted(p.name for p in (run / "report").glob("*.png")) == ["alpha_cell.png"]


def test_report_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text(dump_yaml(RunConfig()))
    assert main(["report", str(empty)]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(UserError, match=r"pip install 'archselect\[plots\]'"):
        plots.plot_run(fake_run(tmp_path / "run"))


def test_cell_dot_source_lists_every_edge_none_dashed_grey():
    text = plots.cell_dot("cell", parse_nb201(ARCH).cell("cell"), NB201Space.op_names)
    assert text.count(" -> ") == 6 and 'label="3: output"' in text
    none = [line for line in text.splitlines() if 'label="none"' in line]
    assert len(none) == 1 and '"0" -> "2"' in none[0] and "style=dashed" in none[0] and plots.NONE_COLOUR in none[0]
    assert text.count("style=dashed") == 1  # only the none edge
    arch = DARTSSpace().derive({ct: torch.ones(14, 8) for ct in ("normal", "reduce")})
    darts = plots.cell_dot("reduce", arch.cell("reduce"), DARTSSpace.op_names)
    assert darts.count("style=dashed") == 4 and 'label="c_{k-2}"' in darts  # concat edges, two inputs
    assert 'label="reduce cell"' in darts and darts.count(" -> ") == 8 + 4


def test_number_format():
    assert [plots._fmt(v) for v in (0.0, 0.19876, 12.5, -3.2e-4, 12345.0, None)] == \
        ["0", "0.199", "12.5", "-3.2e-4", "1.2e4", ""]


# -- the selector comparison (reporting/compare.py) --------------------------------------------------------------------

def nb201_arch(ops):
    """The NB201 cell with op index ops[e] on edge e (the space's edge order)."""
    return NB201Space().architecture({"cell": list(ops)})


def tiny_table(path, accuracies):
    """A NAS-Bench-201 table CSV of a few cells: {op indices: (cifar10, cifar100, imagenet16 test accuracy)}."""
    from archselect.evaluate.benchmark import COLUMNS

    lines = [",".join(COLUMNS)]
    for i, (ops, accs) in enumerate(accuracies.items()):
        values = dict(zip(("cifar10_test", "cifar100_test", "imagenet16_test"), accs))
        lines.append(",".join([str(i), str(nb201_arch(ops))] + [str(values.get(c, "")) for c in COLUMNS[2:]]))
    path.write_text("\n".join(lines) + "\n")
    return path


A, B, C = (3, 3, 3, 3, 3, 3), (1, 1, 1, 1, 1, 1), (0, 3, 4, 0, 3, 3)
ACCURACIES = {A: (94.0, 72.0, 46.0), B: (80.0, 50.0, 20.0), C: (85.0, 60.0, 30.0), (2,) * 6: (90.0, 70.0, 40.0)}


def test_ordered_follows_the_configured_selectors_then_the_rest():
    from archselect.reporting.compare import ordered

    sels = {n: n for n in ("influence", "magnitude", "random-paths", "shapley")}
    assert list(ordered(sels, ["shapley", "magnitude", "perturbation"])) == \
        ["shapley", "magnitude", "influence", "random-paths"]


def test_score_tau_is_the_mean_per_edge_kendall_tau():
    from archselect.reporting.compare import score_tau, tau_matrix

    arch = nb201_arch(A)
    a = Selection("x", arch, {"cell": [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]})
    b = Selection("y", arch, {"cell": [[10, 20, 30, 40], [20, 10, 30, 40], [5, 5, 5, 5]]})
    # edge 0: same order (τ 1); edge 1: one of 6 pairs swapped (τ 4/6); edge 2: b constant, τ undefined: left out
    assert score_tau(a, b) == pytest.approx((1 + 4 / 6) / 2)
    reverse = Selection("z", arch, {"cell": [[-v for v in row] for row in a.scores["cell"]]})
    matrix = tau_matrix({"x": a, "y": b, "z": reverse})
    assert sum(matrix, []) == pytest.approx([1, 5 / 6, -1, 5 / 6, 1, -5 / 6, -1, -5 / 6, 1])


def test_standing_is_accuracy_regret_and_percentile_of_the_table(tmp_path):
    from archselect.evaluate.benchmark import NB201Table
    from archselect.reporting.compare import optima, standing

    table = NB201Table.load(tiny_table(tmp_path / "t.csv", ACCURACIES))
    assert optima(table) == {"cifar10_test": 94.0, "cifar100_test": 72.0, "imagenet16_test": 46.0}
    got = standing({"m": Selection("m", nb201_arch(C), {}), "s": Selection("s", nb201_arch(A), {})}, table)
    # C is the 2nd-worst of 4 cells on every dataset: 50 % of the cells are at most as accurate
    assert got["m"]["cifar10_test"] == {"accuracy": 85.0, "regret": 9.0, "percentile": 50.0}
    assert got["m"]["imagenet16_test"] == {"accuracy": 30.0, "regret": 16.0, "percentile": 50.0}
    assert got["s"]["cifar100_test"] == {"accuracy": 72.0, "regret": 0.0, "percentile": 100.0}


def test_collapse_series_looks_up_each_epochs_magnitude_cell(tmp_path):
    from archselect.evaluate.benchmark import NB201Table
    from archselect.reporting.compare import collapse_series, magnitude_per_epoch

    table = NB201Table.load(tiny_table(tmp_path / "t.csv", ACCURACIES))

    def weights(ops):  # softmax-like weights whose argmax per edge is ops[e]
        return [[0.3 if k == op else 0.175 for k in range(5)] for op in ops]

    metrics = [{"epoch": 0, "alpha": {"cell": weights(A)}}, {"epoch": 1},  # an epoch without α is skipped
               {"epoch": 2, "alpha": {"cell": weights(C)}}, {"epoch": 3, "alpha": {"cell": weights(B)}}]
    space = NB201Space()
    assert [(e, str(a)) for e, a in magnitude_per_epoch(metrics, space)] == \
        [(0, str(nb201_arch(A))), (2, str(nb201_arch(C))), (3, str(nb201_arch(B)))]  # C keeps `none`, as magnitude
    assert collapse_series(metrics, space, table) == {
        "cifar10_test": [(0, 94.0), (2, 85.0), (3, 80.0)], "cifar100_test": [(0, 72.0), (2, 60.0), (3, 50.0)],
        "imagenet16_test": [(0, 46.0), (2, 30.0), (3, 20.0)]}


def test_score_heatmaps_share_one_scale_in_the_given_order():
    arch = parse_nb201(ARCH)
    flat = Selection("magnitude", arch, {"cell": [[0.19, 0.2, 0.21, 0.2, 0.2]] * 6})
    signed = Selection("shapley", arch, {"cell": [[-0.5, 0.25, 0.0, 0.1, 0.2]] * 6},
                       stderr={"cell": [[0.01] * 5] * 6})
    fig = plots.score_heatmaps({"shapley": signed, "magnitude": flat}, "cell", NB201Space().edges("cell"),
                               NB201Space.op_names)
    panels = [ax for ax in fig.axes if ax.images and ax.get_visible()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["shapley", "magnitude"]
    for ax, sel in zip(panels, (signed, flat)):
        image = ax.images[0]
        assert image.get_clim() == (-1.0, 1.0)  # one scale for every selector
        unit = max(abs(v) for v in sel.scores["cell"][0])
        assert image.get_array()[0].tolist() == pytest.approx([v / unit for v in sel.scores["cell"][0]])
    texts = [t.get_text() for t in panels[0].texts]
    assert "-0.5\n±0.01" in texts  # the raw score and its standard error
    assert len(fig.axes) == 3  # two panels and one shared colourbar
