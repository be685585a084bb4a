"""benchmarks/gpu_check.sh on the CPU (--device cpu --quick): the script a lent GPU machine runs first works, step by
step, and writes its table. Slow (about 3 minutes): `make test-slow`."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    table = (tmp_path / "gpu_check.md").read_text()
    assert done.returncode == 0, table
    lines = table.splitlines()
    start = lines.index("| step | status | seconds |") + 2  # the steps' table; the steps' outputs hold tables too
    rows = lines[start:lines.index("", start)]
    assert len(rows) == 7 and all("| ok |" in r for r in rows), table
    assert "projected hours" in table and "passed" in table
