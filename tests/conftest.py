"""Shared fixtures: a tiny in-memory dataset registered as 'tiny', so CLI tests run in seconds without files."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
NB201_CSV = REPO.parent / "shared" / "data" / "nb201" / "nb201.csv"

# Shared 2-core machines: timing-based health checks would fail on load, not on bugs.
settings.register_profile("archselect", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("archselect")


_SESSION_CACHE: list[str] = []


def pytest_configure(config):
    """Before any fixture of any scope (module- and session-scoped ones run outside the per-test isolation below):
    a private, empty archselect cache and no table from the environment, whatever the developer's cache holds.
    Subprocesses the tests start (the kill harness) inherit it."""
    import os
    import tempfile

    _SESSION_CACHE.append(tempfile.mkdtemp(prefix="archselect-test-cache-"))
    os.environ["ARCHSELECT_CACHE"] = _SESSION_CACHE[-1]
    os.environ.pop("ARCHSELECT_NB201", None)


def pytest_unconfigure(config):
    import shutil

    for d in _SESSION_CACHE:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _archselect_log_to_caplog(caplog):
    """archselect's logger stops at its own console handler (the CLI sets it up): let caplog see its records too."""
    logger = logging.getLogger("archselect")
    added = not logger.propagate  # records that propagate reach caplog's own handler already
    if added:
        logger.addHandler(caplog.handler)
    yield
    if added:
        logger.removeHandler(caplog.handler)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSELECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ARCHSELECT_NB201", raising=False)
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test. Tests of tiny models use it module-wide
    (`pytestmark = pytest.mark.usefixtures("one_thread")`): on a shared, loaded 2-core machine a second thread only
    waits for a descheduled sibling (measured: 10-30x the CPU time with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64():
    """float64 by default for the test: equal functions then agree to ~1e-15, so no rounding flips a decision."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def nb201_csv():
    if not NB201_CSV.is_file():
        pytest.skip("the NAS-Bench-201 table from ../shared is not available")
    return NB201_CSV


def tiny_idx_dir(root: Path, n_train: int = 256, n_test: int = 64, size: int = 8, seed: int = 0) -> Path:
    """Write a small learnable Fashion-MNIST-format dataset (IDX files): the class is the brightest quadrant."""
    from archselect.data import write_idx
    import numpy as np

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 4, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
        h = size // 2
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, r * h:(r + 1) * h, q * h:(q + 1) * h] += 150
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root
