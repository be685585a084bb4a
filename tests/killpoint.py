"""`python tests/killpoint.py N PHASE ARGS...`: run `archselect ARGS` and SIGKILL it inside its N-th file write
(test-only; tests/killharness.py `kill_in_write`). Writes are every `files.atomic_write_bytes` (config, manifest,
checkpoint tensors and JSON, selections, results, progress) and every metrics line. PHASE:

    before   the write has not started
    torn     half of the data is on disk (in the temporary file, or half a metrics line)
    after    the write is complete (renamed, fsynced), the next statement has not run

With N = 0 nothing is killed and the number of writes is printed to stderr as `writes: W`.
"""
import os
import signal
import sys
import tempfile
from pathlib import Path

from archselect import files, runs

N, PHASE = int(sys.argv[1]), sys.argv[2]
COUNT = [0]
_atomic, _append = files.atomic_write_bytes, runs.RunDir.append_metrics


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path, data):
    COUNT[0] += 1
    if COUNT[0] == N:
        if PHASE == "before":
            _die()
        if PHASE == "torn":
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.write(fd, data[: len(data) // 2])
            os.fsync(fd)
            _die()
        _atomic(path, data)
        _die()
    return _atomic(path, data)


def append_metrics(self, record):
    COUNT[0] += 1
    if COUNT[0] == N:
        if PHASE == "before":
            _die()
        if PHASE == "torn":
            import json

            line = json.dumps(record) + "\n"
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(line[: len(line) // 2])
                f.flush()
                os.fsync(f.fileno())
            _die()
        _append(self, record)
        _die()
    return _append(self, record)


files.atomic_write_bytes = runs.atomic_write_bytes = atomic_write_bytes  # files' writers and the run's own
runs.RunDir.append_metrics = append_metrics

if __name__ == "__main__":
    from archselect.cli import main

    code = main(sys.argv[3:])
    if N == 0:
        print(f"writes: {COUNT[0]}", file=sys.stderr)
    sys.exit(code)
