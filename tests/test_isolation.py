"""The test suite never reads the developer's own archselect cache: not in a test, and not in a module- or
session-scoped fixture, which runs outside the per-test `_isolated_cache` (issue #19: an imported NAS-Bench-201
table made tests/test_kill_stages.py::test_split_search_killed_in_any_node[0] fail)."""
import os
from pathlib import Path

import pytest

from archselect.evaluate.benchmark import cache_root

REAL_CACHE = Path.home() / ".cache" / "archselect"


@pytest.fixture(scope="session")
def session_cache():
    return os.environ.get("ARCHSELECT_CACHE"), cache_root(), os.environ.get("ARCHSELECT_NB201")


@pytest.fixture(scope="module")
def module_cache():
    return os.environ.get("ARCHSELECT_CACHE"), cache_root(), os.environ.get("ARCHSELECT_NB201")


@pytest.mark.parametrize("scope", ["session", "module"])
def test_fixtures_of_every_scope_see_a_private_cache(scope, session_cache, module_cache):
    env, root, table = session_cache if scope == "session" else module_cache
    assert env and Path(env).resolve() != REAL_CACHE.resolve()
    assert root.resolve() != REAL_CACHE.resolve() and table is None
