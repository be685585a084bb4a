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


def test_cell_dot_source_lists_every_real_edge():
    text = plots.cell_dot("cell", parse_nb201(ARCH).cell("cell"), NB201Space.op_names)
    assert text.count(" -> ") == 5 and '"none"' not in text and 'label="3: output"' in text
    arch = DARTSSpace().derive({ct: torch.ones(14, 8) for ct in ("normal", "reduce")})
    darts = plots.cell_dot("reduce", arch.cell("reduce"), DARTSSpace.op_names)
    assert darts.count("style=dashed") == 4 and 'label="c_{k-2}"' in darts  # concat edges, two inputs
    assert 'label="reduce cell"' in darts and darts.count(" -> ") == 8 + 4


def test_number_format():
    assert [plots._fmt(v) for v in (0.0, 0.19876, 12.5, -3.2e-4, 12345.0, None)] == \
        ["0", "0.199", "12.5", "-3.2e-4", "1.2e4", ""]
