"""benchmarks/mobilenet_step.py: one optimizer's step measured in-process at the --quick size (fast), and the
script's table over registered optimizers in child processes (slow)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "mobilenet_step.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def load_script():
    spec = importlib.util.spec_from_file_location("mobilenet_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_step_is_measured_and_tabled():
    bench = load_script()
    args = bench.argparse.Namespace(quick=True, resolution=None, width=None, device="cpu", batch=2, steps=1,
                                    warmup=0, threads=1)
    result = bench.measure("gdas", bench.size_of(args), 2, 1, 0, "cpu", 1)
    assert len(result["times"]) == 1 and result["times"][0] > 0
    assert result["peak_mib"] > 0 and 0 <= result["rise_mib"] <= result["peak_mib"] and result["params"] > 0
    text = bench.table([result, {"optimizer": "darts-minus", "error": "needs skip_connect"}], args)
    lines = text.splitlines()
    assert "32 px, width 0.25" in lines[0] and lines[2].startswith("| optimizer | median s/step")
    assert lines[4].startswith("| gdas | ") and lines[5] == "| darts-minus | refused: needs skip_connect | | | | |"


@pytest.mark.slow
def test_the_script_tables_each_optimizer_in_its_own_process():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--optimizers", "darts,rsps,darts-minus",
                           "--threads", "1", "--steps", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| optim")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["darts", "rsps", "darts-minus"]
    assert "refused: search.optimizer=darts-minus" in rows[2]
    unknown = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--optimizers", "dartz"], capture_output=True,
                             text=True, timeout=600)
    assert unknown.returncode == 1 and "did you mean 'darts'" in unknown.stderr
