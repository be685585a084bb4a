"""`archselect bench`: the selector x optimizer x seed matrix on shared supernets, its tables and diagnostics."""
from .config import BenchConfig, load_bench_config
from .matrix import run_bench, run_group

__all__ = ["BenchConfig", "load_bench_config", "run_bench", "run_group"]
