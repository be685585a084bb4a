"""The Python API: every CLI command is a thin layer over a documented function, and both give the same results."""
import json
import pydoc
import shutil

import pytest

import archselect as asel
from archselect.cli import main

from conftest import tiny_idx_dir

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"space.C": 4, "space.N": 1, "data.batch_size": 32, "search.epochs": 1, "threads": 1,
        "select.options.shapley.permutations": 2}


@pytest.fixture
def searched(tmp_path):
    data = tiny_idx_dir(tmp_path / "data")
    run = asel.search(out=tmp_path / "run", overrides={**TINY, "data.data_dir": str(data)})
    return run


def test_search_returns_a_run_with_its_results(searched):
    assert isinstance(searched, asel.Run) and searched.exists()
    assert searched.config.space.C == 4 and len(searched.metrics) == 1
    assert str(searched.architecture) == searched.result["selections"]["magnitude"]
    assert set(searched.selections()) == {"magnitude"}
    assert sum(p.numel() for p in searched.supernet().parameters()) > 0


def test_api_and_cli_give_identical_selections(searched, tmp_path, capsys):
    sels = asel.select(searched, ["magnitude", "shapley"])
    api = {n: json.loads((searched.path / "selections" / f"{n}.json").read_text()) for n in sels}
    assert main(["select", str(searched.path), "--selector", "magnitude,shapley"]) == 0
    cli = {n: json.loads((searched.path / "selections" / f"{n}.json").read_text()) for n in sels}
    for n in sels:
        assert api[n]["scores"] == cli[n]["scores"] and api[n]["architecture"] == cli[n]["architecture"]
        assert sels[n].to_dict()["scores"] == cli[n]["scores"]


def test_compare_is_data_and_a_table(searched):
    sels = asel.select(searched, ["magnitude", "shapley"])
    comparison = asel.compare(sels)
    rows = comparison.to_dict()["agreement"]["cell"]
    assert len(rows) == 6 and all(set(r["chosen"]) == {"magnitude", "shapley"} for r in rows)
    text = str(comparison)
    assert "magnitude" in text and "shapley" in text and "forward passes" in text
    assert asel.compare(searched).to_dict() == comparison.to_dict()  # from the run directory: the same


def test_building_blocks():
    space = asel.spaces.get("nb201", C=8, N=1)
    net = space.supernet()
    assert len(net.op_names) == 5 and "nb201" in asel.spaces.names()
    selector = asel.selectors.get("shapley", permutations=5)
    assert selector.options.permutations == 5 and selector.name == "shapley"
    assert asel.optimizers.get("darts").alpha_by_gradient and not asel.optimizers.get("rsps").trains_alpha
    with pytest.raises(asel.errors.UserError, match="unknown selector"):
        asel.selectors.get("magnitud")


def test_help_lists_the_api():
    text = pydoc.render_doc(asel)
    for name in ("search", "select", "compare", "split", "train", "report", "show", "run_bench", "spaces",
                 "selectors", "optimizers", "Run"):
        assert name in text


def test_select_on_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(asel.errors.UserError, match="not a run directory"):
        asel.select(tmp_path, ["magnitude"])


def test_show_lists_every_selection_with_its_cost(searched):
    asel.select(searched, ["shapley"])
    summary = asel.show(searched)
    lines = [line for line in summary.splitlines() if line.strip().startswith(("magnitude:", "shapley:"))]
    assert [line.split(":")[0].strip() for line in lines] == ["magnitude", "shapley"]  # configured first
    assert "forward" in lines[1] and "epochs done: 1/1" in summary


def test_search_with_several_selectors_prints_their_comparison(tmp_path, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    args = [f"{k}={v}" for k, v in TINY.items()]
    assert main(["search", "--out", str(tmp_path / "run"), "--selector", "magnitude,shapley",
                 f"data.data_dir={data}", *args]) == 0
    out = capsys.readouterr().out
    assert "edges)" in out and "forward passes" in out and "score stderr (mean)" in out
    assert "network passes" in out  # shapley packs 8 permutations to a pass by default


def test_comparison_with_the_benchmark_table_gives_accuracy_and_percentile(searched, nb201_csv):
    sels = asel.select(searched, ["magnitude", "shapley"])
    comparison = asel.compare(sels, str(nb201_csv))
    table = asel.evaluate.benchmark.NB201Table.load(nb201_csv)
    for name, sel in sels.items():
        acc = table.lookup(sel.architecture)["cifar10_test"]
        column = table.metric_array("cifar10_test")
        assert comparison.percentile[name] == pytest.approx(100 * (column <= acc).sum() / len(column))
    text = str(comparison)
    assert "NB201 cifar10_test (%)" in text and "percentile, cifar10_test" in text
    best = table.best("cifar10_test")
    assert table.percentile("cifar10_test", best.value) == 100.0


def test_tensorboard_gets_the_epoch_scalars_and_alpha_per_edge(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tiny_idx_dir(tmp_path / "data")
    args = [f"{k}={v}" for k, v in {**TINY, "search.epochs": 2}.items()]
    assert main(["search", "--out", str(tmp_path / "run"), "--tensorboard", f"data.data_dir={data}", *args]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "search_valid_acc", "lr"):
        values = [e.value for e in events.Scalars(f"search/{key}")]
        assert [e.step for e in events.Scalars(f"search/{key}")] == [0, 1]
        assert values == pytest.approx([m[key] for m in metrics], rel=1e-6)
    alpha = [t for t in tags if t.startswith("alpha/cell/")]
    assert len(alpha) == 6 * 5 and "alpha/cell/0->1/nor_conv_3x3" in alpha
    last = {t: events.Scalars(t)[-1].value for t in alpha if t.startswith("alpha/cell/0->1/")}
    assert sum(last.values()) == pytest.approx(1.0, abs=1e-5)  # softmax over the edge's ops


def test_show_on_a_result_json_without_its_fields(tmp_path):
    """Found by the fuzz suite: a result.json of `{}` (edited by hand) is summarised, not a KeyError."""
    from conftest import REPO

    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "data" / "run-v0" / "finished", run)
    (run / "result.json").write_text("{}")
    assert "result (None): ?" in asel.show(run) and asel.Run(run).architecture is None
