"""Progress lines (logs.Progress, tick, track, heartbeat), on a fake clock; the edge and accuracy forms users read."""
import logging
import time

import pytest

from archselect import logs
from archselect.arch import edge_label, edge_name


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="archselect")
    return lambda: [r.getMessage() for r in caplog.records]


def test_a_line_at_most_every_10_s_with_its_eta_and_a_final_line(lines):
    clock = FakeClock()
    with logs.Progress("shapley", 50, "permutation", clock=clock) as p:
        for _ in range(50):
            clock.now += 3.0  # 3 s per permutation: 150 s in all
            p.update()
    out = lines()
    assert out[0] == "shapley: permutation 4/50, 12 s elapsed, ETA 2 min 18 s"  # 46 left at 3 s each
    assert out[1] == "shapley: permutation 8/50, 24 s elapsed, ETA 2 min 6 s"
    assert len(out) == 150 // 12 + 1  # one line per 12 s (a check falls on whole updates), and the final one
    assert out[-1] == "shapley: permutation 50/50, done in 2 min 30 s"


def test_a_short_loop_says_nothing(lines):
    clock = FakeClock()
    with logs.Progress("epoch 1/3", 10, clock=clock) as p:
        for _ in range(10):
            clock.now += 0.5
            p.update()
    assert lines() == []


def test_no_eta_without_a_total_or_before_the_first_unit_and_a_resume_counts_its_own_pace(lines):
    clock = FakeClock()
    with logs.Progress("split", unit="batch", clock=clock) as p:
        clock.now += 11
        p.update()
    with logs.Progress("perturbation", 6, "decision", done=4, clock=clock, final=False) as p:
        clock.now += 11
        p.poll()  # nothing decided yet in this session: no pace to go by
        clock.now += 10
        p.update()  # decision 5 took 21 s: the last one will too
    assert lines() == ["split: batch 1, 11 s elapsed", "split: batch 1, done in 11 s",
                       "perturbation: decision 4/6, 11 s elapsed", "perturbation: decision 5/6, 21 s elapsed, ETA 21 s"]


def test_tick_drives_the_innermost_progress_and_nested_ones_share_the_timer(lines):
    clock = FakeClock()
    logs.tick(5)  # no Progress active: nothing happens
    with logs.Progress("influence", 30, "Hessian-vector product", clock=clock, final=False):
        for _ in range(30):
            clock.now += 2
            logs.tick(1)
        with logs.Progress("evaluation", 4, "batch", clock=clock) as inner:
            clock.now += 5
            inner.update()  # 5 s after the outer's last line: not yet due
            clock.now += 5
            logs.tick()
    assert lines() == ["influence: Hessian-vector product 5/30, 10 s elapsed, ETA 50 s",
                       "influence: Hessian-vector product 10/30, 20 s elapsed, ETA 40 s",
                       "influence: Hessian-vector product 15/30, 30 s elapsed, ETA 30 s",
                       "influence: Hessian-vector product 20/30, 40 s elapsed, ETA 20 s",
                       "influence: Hessian-vector product 25/30, 50 s elapsed, ETA 10 s",
                       "influence: Hessian-vector product 30/30, 1 min 0 s elapsed",
                       "evaluation: batch 1/4, 10 s elapsed, ETA 30 s", "evaluation: batch 1/4, done in 10 s"]


def test_track_counts_the_items_and_an_error_ends_without_a_final_line(lines):
    clock = FakeClock()
    for _ in logs.track([0, 1, 2], "rank correlation", unit="architecture", clock=clock):  # total: len()
        clock.now += 6
    with pytest.raises(RuntimeError):
        for i in logs.track(iter(range(4)), "benchmark import", 4, "architecture", clock=clock):
            clock.now += 6
            if i == 3:
                raise RuntimeError("damaged")
    assert lines() == ["rank correlation: architecture 2/3, 12 s elapsed, ETA 6 s",
                       "rank correlation: architecture 3/3, done in 18 s",
                       "benchmark import: architecture 2/4, 12 s elapsed, ETA 12 s"]


def test_durations():
    assert [logs.duration(s) for s in (0.4, 59.6, 102, 3599, 7500)] == ["0 s", "1 min 0 s", "1 min 42 s",
                                                                       "59 min 59 s", "2 h 05 min"]


def test_heartbeat_fills_a_silence_with_the_callers_prefix(tmp_path):
    with logs.to_file(tmp_path / "log.txt"), logs.prefix("g0"), logs.heartbeat("report", every=0.05, poll=0.01):
        time.sleep(0.3)
    beats = (tmp_path / "log.txt").read_text().splitlines()
    assert 1 <= len(beats) <= 7 and all(" INFO [g0] report: " in b and b.endswith(" s elapsed") for b in beats)


def test_a_line_comes_on_time_however_long_one_unit_takes(tmp_path):
    with logs.to_file(tmp_path / "log.txt"), logs.Progress("influence", 2, "Hessian-vector product", every=0.1) as p:
        time.sleep(0.35)  # one slow unit: the helper thread speaks meanwhile
        p.update()
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert "influence: Hessian-vector product 0/2, " in lines[0]  # before the unit was done
    assert "influence: Hessian-vector product 1/2, done in 0 s" in lines[-1]


def test_edges_and_accuracies_as_users_read_them():
    assert edge_name(0, 3) == "0->3" and edge_label(3, 0, 3) == "edge 3 (0->3)"
    assert logs.percent(0.93274) == "93.27%" and logs.percent(1.0) == "100.00%"


def test_a_step_after_a_long_silence_waits_its_own_interval(lines):
    logs._REAL.last -= 100  # nothing was logged for 100 s before this step
    with logs.Progress("split", 3, "batch", final=False) as p:
        p.update()
    assert lines() == []
