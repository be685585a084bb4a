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
