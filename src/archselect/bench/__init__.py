"""The bench matrix (selector x optimizer x split x seed on shared supernets): its config, its groups and its tables.
pipeline/bench_runner.py runs it."""
from .config import BenchConfig, load_bench_config

__all__ = ["BenchConfig", "load_bench_config"]
