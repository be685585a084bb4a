"""Search survives repeated SIGKILLs at seeded random moments: the resumed result equals an uninterrupted run."""
import json

import pytest

from conftest import tiny_idx_dir
from killharness import search_survives_kills, steps_done
from test_cli import tiny_args


@pytest.mark.parametrize("seed", [0, 1, *(pytest.param(s, marks=pytest.mark.slow) for s in range(2, 8))])
def test_search_killed_at_random_moments(tmp_path, seed):
    data = tiny_idx_dir(tmp_path / "data")
    args = [*tiny_args(data, epochs=4), "search.checkpoint_every=1"]
    kills = search_survives_kills(tmp_path, args, kills=3, seed=seed, spread=4)
    steps = ", ".join(str(steps_done(k.progress, "search")) for k in kills)
    print(f"search: {len(kills)} kills delivered (seed {seed}; after step {steps} of 16)")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    result = json.loads((killed / "result.json").read_text())
    assert result["architecture"] == json.loads((reference / "result.json").read_text())["architecture"]


# DrNAS (random draws every step) in the default run; the two schedule-only ones with `make test-slow` (45 s each)
@pytest.mark.parametrize("optimizer", ["drnas", *(pytest.param(o, marks=pytest.mark.slow)
                                                  for o in ("beta-darts", "darts-minus"))])
def test_search_with_each_new_optimizer_killed_and_resumed(tmp_path, optimizer):
    """The optimizers' own state across a kill: DrNAS' Dirichlet draws (the checkpointed RNG), β-DARTS' λ and
    DARTS−' auxiliary-skip β (the checkpointed schedule position), over 4 epochs so that both schedules move."""
    data = tiny_idx_dir(tmp_path / "data")
    args = [*tiny_args(data, epochs=4), "search.checkpoint_every=1", f"search.optimizer={optimizer}"]
    search_survives_kills(tmp_path, args, kills=2, seed=0, spread=6, what=optimizer)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    result = json.loads((killed / "result.json").read_text())
    assert result["architecture"] == json.loads((reference / "result.json").read_text())["architecture"]
