"""How tests/data/run-v0/ was made, with archselect at commit 5da8509 (before the pipeline redesign): a finished search
(`finished/`, with magnitude and Shapley selections) and the same search stopped after its first epoch (`killed/`:
the state a kill leaves). tests/test_compat.py checks that today's code still resumes, selects and reports them.

    python tests/data/make_v0_runs.py      (rewrites tests/data/run-v0/)
"""
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_idx_dir  # noqa: E402

from archselect.cli import main  # noqa: E402

HERE = Path(__file__).parent / "run-v0"
DATA = Path("/tmp/archselect-v0-data")
ARGS = ["space.C=4", "space.N=1", "data.batch_size=32", "data.eval_batch_size=64", "search.epochs=2", "threads=1",
        "select.options.shapley.permutations=2"]

shutil.rmtree(HERE, ignore_errors=True)
tiny_idx_dir(DATA, n_train=128, n_test=32)
finished = HERE / "finished"
assert main(["search", "--out", str(finished), "--selector", "magnitude,shapley", f"data.data_dir={DATA}", *ARGS]) == 0
killed = HERE / "killed"
shutil.copytree(finished, killed)
# A kill after epoch 1: only the first epoch's checkpoint and metrics line, nothing of the selection stage.
for name in ("result.json", "comparison.json", ".lock"):
    (killed / name).unlink(missing_ok=True)
shutil.rmtree(killed / "selections")
for p in killed.glob("supernet-*"):
    p.unlink()
ckpts = sorted((killed / "checkpoints").glob("search-*.json"))
for p in ckpts[1:]:
    p.unlink()
    p.with_suffix(".safetensors").unlink()
lines = (killed / "metrics.jsonl").read_text().splitlines()
(killed / "metrics.jsonl").write_text(lines[0] + "\n")
(finished / ".lock").unlink(missing_ok=True)
print(json.dumps({p.name: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()) for p in (finished, killed)},
                 indent=1))
