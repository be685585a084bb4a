"""Run files someone hands you (issue #19): they never make archselect write outside the run directory, and a file
of the wrong shape or type is one line and exit code 2, never a traceback."""
import json
import shutil
from pathlib import Path

import pytest

from archselect.cli import main

V0 = Path(__file__).parent / "data" / "run-v0" / "finished"


def files_under(root):
    return {p for p in Path(root).rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["x/../../../../elsewhere/anything", "../../escaped", "a\x00b"])
def test_report_never_writes_outside_the_run_directory(tmp_path, capsys, name):
    pytest.importorskip("matplotlib")
    run = tmp_path / "deep" / "er" / "run"
    shutil.copytree(V0, run)
    sel = json.loads((run / "selections" / "magnitude.json").read_text())
    sel["selector"] = name
    (run / "selections" / "evil.json").write_text(json.dumps(sel))
    before = files_under(tmp_path)
    code = main(["report", str(run), "--engine", "matplotlib"])
    written = files_under(tmp_path) - before
    assert code == 0, capsys.readouterr().err
    assert written and all(run / "report" in p.parents for p in written), sorted(map(str, written))


@pytest.mark.parametrize("edit", [
    {"selector": 3}, {"scores": "high"}, {"scores": {"cell": [[1, "a"]]}}, {"cost": {"forward": "many"}},
    {"cost": {"nonsense": 1}}, {"architecture": {"space": "nb201", "cells": {"cell": {"edges": [[1e309, 1, "x"]]}}}},
])
def test_a_selection_file_of_the_wrong_types_is_one_line(tmp_path, capsys, edit):
    run = tmp_path / "run"
    shutil.copytree(V0, run)
    sel = json.loads((run / "selections" / "magnitude.json").read_text())
    (run / "selections" / "magnitude.json").write_text(json.dumps({**sel, **edit}))
    code = main(["report", str(run), "--engine", "matplotlib"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("archselect: error:")
