"""The HTML report of a bench (and of a single run): self-contained, holds the tables and the figures, renders."""
import base64
import re
import sys
from html.parser import HTMLParser

import pytest
import torch
import yaml

from archselect.pipeline import bench_runner
from archselect.bench.config import load_bench_config
from archselect.cli import main
from archselect.reporting.html import write_bench_report
from archselect.selection import SELECTORS

from conftest import NB201_CSV, REPO, tiny_idx_dir

SECOND = next((s for s in ("shapley", "influence", "perturbation") if s in SELECTORS), None)


class Links(HTMLParser):
    """Every src/href value, every tag, and whether tags balance."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.refs, self.tags, self.stack, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    data = tiny_idx_dir(root / "data")
    cfg = {"name": "report-test", "description": "A tiny bench for the report tests.",
           "run": {"threads": 1, "benchmark": str(NB201_CSV) if NB201_CSV.is_file() else None,
                   "data": {"dataset": "fashion-mnist", "data_dir": str(data), "batch_size": 32},
                   "space": {"C": 4, "N": 1}, "search": {"epochs": 1},
                   "select": {"options": {"shapley": {"permutations": 2, "batch_size": 32},
                                          "influence": {"batches": 1},
                                          "perturbation": {"tune_steps": 1, "valid_batches": 1}}}},
           "seeds": [0], "optimizers": ["darts", "fixed-alpha"],
           "selectors": ["magnitude"] + ([SECOND] if SECOND else []),
           "diagnostics": {"correlation_samples": 8 if NB201_CSV.is_file() else 0, "correlation_images": 64,
                           "hessian_iters": 3, "hessian_batches": 1}}
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / "bench"
    assert bench_runner.run_groups(load_bench_config(path), out) == []
    yield out
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def report(bench_dir):
    return write_bench_report(bench_dir)


def test_report_is_self_contained(report):
    text = report.read_text()
    parser = Links()
    parser.feed(text)
    assert parser.errors == [] and parser.stack == []
    assert parser.refs and all(r.startswith(("data:image/", "#")) for r in parser.refs)
    assert "<script" not in text and "url(" not in text and "http://" not in text and "https://" not in text
    anchors = {r[1:] for r in parser.refs if r.startswith("#")}
    assert anchors and all(f'id="{a}"' in text for a in anchors)


def test_report_holds_the_tables_and_images(report, bench_dir):
    text = report.read_text()
    for table in ("results", "best", "cost", "supernet", "param-free"):
        assert f'<table id="{table}"' in text
    assert "C10 test" in text and "Published numbers" in text and "fashion-mnist search" in text
    images = re.findall(r'src="data:(image/[a-z+]+);base64,([A-Za-z0-9+/=]+)"', text)
    # accuracy bars, diagnostics, (scatter), agreement; per group: α, heatmaps and one cell per selector
    n_sel = 1 + bool(SECOND)
    assert len(images) >= 2 + 2 * (2 + n_sel)
    for mime, data in images:
        blob = base64.b64decode(data)
        assert blob.startswith(b"\x89PNG") if mime == "image/png" else b"<svg" in blob[:400]
    assert (bench_dir / "report" / "results.md").read_text() == (bench_dir / "results.md").read_text()
    for gid in ("nb201-darts-none-s0", "nb201-fixed-alpha-none-s0"):
        assert f"<summary>{gid}" in text


def test_report_command_on_a_bench_and_on_a_run(bench_dir, capsys, monkeypatch):
    import archselect.reporting.html as report_html

    calls = []
    monkeypatch.setattr(report_html, "write_bench_report", lambda out, engine: calls.append((out, engine)) or "page")
    assert main(["report", str(bench_dir)]) == 0  # a bench directory: its comparison page (built in the fixture)
    assert [(str(o), e) for o, e in calls] == [(str(bench_dir), "auto")] and capsys.readouterr().out.strip() == "page"
    run = bench_dir / "runs" / "nb201-darts-none-s0"
    assert main(["report", str(run), "--engine", "matplotlib"]) == 0
    out = capsys.readouterr().out
    assert str(run / "report" / "index.html") in out
    page = (run / "report" / "index.html").read_text()
    parser = Links()
    parser.feed(page)
    assert parser.refs and all(r.startswith("data:image/png") for r in parser.refs)
    assert '<table id="selections"' in page and "magnitude" in page


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import render_report

    if render_report.find_browser() is None:
        pytest.skip("no headless chromium on this machine (apt-get install -y chromium)")
    shot = render_report.render(report, tmp_path / "shot.png", width=1400, height=2400)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1400)
    assert pixels.std() > 0.05  # not a blank page


# -- the run report compares its selectors -----------------------------------------------------------------------------

def comparison_run(root, table=None):
    """A run directory by hand: 3 epochs of α, a magnitude and a Shapley selection (with standard errors) whose per-edge
    scores have a known Kendall τ, `select.selectors` in non-alphabetical order, and (optionally) a tiny NB201 table."""
    import json

    from archselect.config import RunConfig, dump_yaml
    from archselect.selection import Selection
    from test_plots import A, C, nb201_arch

    cfg = RunConfig()
    cfg.select.selectors = ["shapley", "magnitude"]
    cfg.benchmark = str(table) if table else None
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(dump_yaml(cfg))
    weights = [[0.3 if k == op else 0.175 for k in range(5)] for op in C]  # every epoch derives C, as magnitude does
    (root / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "search_valid_acc": 0.5, "seconds": 1.0, "alpha": {"cell": weights}}) + "\n"
        for e in range(3)))
    (root / "selections").mkdir()
    up = [[1.0, 2.0, 3.0, 4.0, 5.0]] * 6
    swapped = [[2.0, 1.0, 3.0, 4.0, 5.0]] * 3 + up[:3]  # edges 0-2: one of 10 pairs swapped (τ 0.8); 3-5: τ 1
    sels = [Selection("magnitude", nb201_arch(C), {"cell": up}),
            Selection("shapley", nb201_arch(A), {"cell": swapped}, stderr={"cell": [[0.1] * 5] * 6})]
    for sel in sels:
        (root / "selections" / f"{sel.selector}.json").write_text(json.dumps(sel.to_dict()))
    return root


def table_rows(page, table_id):
    body = page.split(f'<table id="{table_id}"')[1].split("</table>")[0]
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_run_report_compares_the_selectors(tmp_path):
    from archselect.evaluate.benchmark import NB201Table
    from archselect.reporting.html import run_html
    from archselect.runs import RunDir
    from test_plots import ACCURACIES, A, C, nb201_arch, tiny_table

    table_path = tiny_table(tmp_path / "t.csv", ACCURACIES)
    table = NB201Table.load(table_path)
    page = run_html(RunDir(comparison_run(tmp_path / "run", table_path)), engine="matplotlib")
    standing = table_rows(page, "nb201-standing")
    assert [r[0] for r in standing[1:]] == ["shapley", "magnitude"]  # the configured order, not alphabetical
    assert [r[0] for r in table_rows(page, "selections")[1:]] == ["shapley", "magnitude"]
    for row, cell in zip(standing[1:], (A, C)):
        found = table.lookup(nb201_arch(cell))
        expected = []
        for c in ("cifar10_test", "cifar100_test", "imagenet16_test"):
            acc = found[c]
            expected += [f"{acc:.2f}", f"{table.best(c).value - acc:.2f}", f"{table.percentile(c, acc):.2f}"]
        assert row[1:] == expected
    tau = table_rows(page, "kendall-tau")
    assert tau[0] == ["Kendall τ", "shapley", "magnitude"]
    assert [r[1:] for r in tau[1:]] == [["1.00", "0.90"], ["0.90", "1.00"]]  # mean of 0.8, 0.8, 0.8, 1, 1, 1
    assert page.index("cell chosen by shapley") < page.index("cell chosen by magnitude")
    for alt in ("NB201 accuracy by selector", "cost vs accuracy", "magnitude cell accuracy per epoch",
                "score error bars, cell"):
        assert f'alt="{alt}"' in page


def test_run_report_without_a_table_says_how_to_import_one(tmp_path):
    from archselect.reporting.html import run_html
    from archselect.runs import RunDir

    page = run_html(RunDir(comparison_run(tmp_path / "run")), engine="matplotlib")
    assert "archselect benchmark import" in page and 'id="nb201-standing"' not in page
    assert 'id="kendall-tau"' in page and 'alt="score heatmaps, cell"' in page  # the rest still renders
    assert 'alt="magnitude cell accuracy per epoch"' not in page


def test_every_published_number_has_a_source_that_states_it():
    from dataclasses import fields

    from archselect.bench.published import PUBLISHED, Published, columns_for

    assert "verified" not in {f.name for f in fields(Published)}  # unverified numbers are removed, not marked
    for p in PUBLISHED:
        assert p.values and set(p.values) <= set(columns_for(p.space)), p.method
        assert p.source.strip() and not any(w in p.source.lower() for w in ("recollection", "not available")), p.method
        assert all(isinstance(mean, float) for mean, _ in p.values.values())


def test_bench_report_shows_no_unverified_numbers(report):
    text = report.read_text()
    assert "recollection" not in text and "†" not in text and "check against the paper" not in text
    assert "CoLLM-NAS Table 4" in text
