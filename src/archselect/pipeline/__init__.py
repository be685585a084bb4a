"""The pipeline layer: each stage as a function over a run directory (stages.py), and the bench that runs them over
a matrix (bench_runner.py). The CLI and the Python API (archselect/__init__.py) are thin layers over these."""
from .bench_runner import run_bench, run_group, run_groups
from .imported import import_checkpoint, select_supernet
from .stages import (Run, as_run, compare, report, search, search_run, search_seeds, select, show, split, train,
                     write_result)

__all__ = ["Run", "as_run", "compare", "import_checkpoint", "report", "run_bench", "run_group", "run_groups", "search", "search_run",
           "search_seeds", "select", "select_supernet", "show", "split", "train", "write_result"]
