"""Selector variants (one selector under labels with their own options, side by side) and bench exclusions."""
from __future__ import annotations

import json

import pytest
import yaml

from archselect.bench import matrix
from archselect.bench.config import load_bench_config
from archselect.cli import main
from archselect.config import SelectConfig
from archselect.errors import UserError
from archselect.runs import RunDir
from archselect.selection.stage import load_selections
from archselect.selection.variants import check_variants, make_selector, make_selectors
from archselect.selection.zero_cost import ZeroCost

from conftest import tiny_idx_dir
from test_cli import tiny_args
from test_evaluator import random_alphas, tiny_context

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

VARIANTS = {"zc-synflow": {"selector": "zero-cost", "proxy": "synflow"},
            "zc-nwot": {"selector": "zero-cost", "proxy": "nwot"}}


def test_a_variant_is_its_base_selector_with_merged_options_under_its_label():
    sel = make_selector("zc-synflow", {"zero-cost": {"batches": 2, "proxy": "meco"}}, VARIANTS)
    assert isinstance(sel, ZeroCost) and sel.name == "zc-synflow" and sel.base_name == "zero-cost"
    assert sel.options.proxy == "synflow" and sel.options.batches == 2  # own options over the base's
    plain = make_selector("zero-cost", {"zero-cost": {"proxy": "meco"}}, VARIANTS)
    assert plain.name == "zero-cost" and plain.options.proxy == "meco"


def test_variants_select_side_by_side_and_record_their_base():
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    a, b = make_selectors(["zc-synflow", "zc-nwot"], SelectConfig(variants=VARIANTS))
    sa, sb = a.select(ctx), b.select(ctx)
    assert (sa.selector, sb.selector) == ("zc-synflow", "zc-nwot")
    assert sa.details["variant_of"] == sb.details["variant_of"] == "zero-cost"
    assert sa.details["proxy"] == "synflow" and sb.details["proxy"] == "nwot"
    assert sa.scores != sb.scores
    assert ZeroCost({"proxy": "nwot"}).select(ctx).scores == sb.scores  # a variant computes what its options say


@pytest.mark.parametrize("variants, message", [
    ({"zero-cost": {"selector": "zero-cost"}}, "registered selector"),
    ({"bad label": {"selector": "zero-cost"}}, "label"),
    ({"v": {"proxy": "nwot"}}, "selector: NAME"),
    ({"v": {"selector": "zero-kost"}}, "did you mean|zero-cost"),
    ({"v": {"selector": "w"}, "w": {"selector": "zero-cost"}}, "another variant"),
    ([1, 2], "must map labels"),
])
def test_malformed_variants_are_one_line_errors(variants, message):
    with pytest.raises(UserError, match=message):
        check_variants(variants)


def test_a_bad_variant_option_names_the_variant():
    with pytest.raises(UserError, match="select.variants.zc.proxy"):
        make_selector("zc", {}, {"zc": {"selector": "zero-cost", "proxy": "nope"}})


def test_cli_runs_variants_and_reports_them(tmp_path, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"select": {"selectors": ["magnitude", "zc-synflow", "zc-nwot"],
                                                 "variants": VARIANTS}}))
    out = tmp_path / "run"
    assert main(["search", "--config", str(config), "--out", str(out), *tiny_args(data, epochs=1)]) == 0
    assert set(load_selections(RunDir(out))) == {"magnitude", "zc-synflow", "zc-nwot"}
    result = json.loads((out / "result.json").read_text())
    assert set(result["selections"]) == {"magnitude", "zc-synflow", "zc-nwot"}
    capsys.readouterr()
    # a selector that is neither registered nor a variant fails before any training
    assert main(["search", "--config", str(config), "--out", str(tmp_path / "r2"), "--selector", "zc-typo",
                 *tiny_args(data, epochs=1)]) == 2
    err = capsys.readouterr().err
    assert "zc-typo" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2" / "supernet-0.safetensors").exists()


# -- bench exclusions --------------------------------------------------------------------------------------------------

def bench(tmp_path, **extra):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0, 1], "optimizers": ["darts", "fixed-alpha"],
                                    "splits": ["none", {"name": "gm", "label": "gm2"}], **extra}))
    return path


def test_exclude_drops_the_matching_groups(tmp_path):
    cfg = load_bench_config(bench(tmp_path, exclude=[{"optimizer": "fixed-alpha", "split": "gm2"}, {"seed": 1,
                                                                                                     "split": "none"}]))
    assert [g.id for g in matrix.groups(cfg)] == ["nb201-darts-none-s0", "nb201-darts-gm2-s0",
                                                  "nb201-fixed-alpha-none-s0", "nb201-darts-gm2-s1"]


@pytest.mark.parametrize("rule, message", [
    ({"optimiser": "darts"}, "unknown axis"),
    ({"split": "gm"}, "not in the bench's splits"),  # labels, not names
    ({"seed": 7}, "not in the bench's seeds"),
    ({}, "must map axes"),
])
def test_bad_exclusions_are_one_line_errors(tmp_path, rule, message):
    with pytest.raises(UserError, match=message):
        load_bench_config(bench(tmp_path, exclude=[rule]))


def test_excluding_everything_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no group"):
        load_bench_config(bench(tmp_path, exclude=[{"seed": 0}, {"seed": 1}]))


def test_bench_selectors_may_be_variants_of_the_base_run(tmp_path):
    path = bench(tmp_path, selectors=["magnitude", "zc-nwot"], run={"select": {"variants": VARIANTS}})
    assert load_bench_config(path).selectors == ["magnitude", "zc-nwot"]
    path = bench(tmp_path, selectors=["magnitude", "zc-meco"], run={"select": {"variants": VARIANTS}})
    with pytest.raises(UserError, match="zc-meco"):
        load_bench_config(path)
