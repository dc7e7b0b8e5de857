"""A fake case executor for the engine's tests and benchmark (named through
$ORCH_CASE_EXECUTOR="engine_fake:record_case", with tests/ on PYTHONPATH).

Per attempt it appends "start" and "end" lines (case, worker pid, time) to
``<run_dir>/<host>/intervals.log``, sleeping $FAKE_CASE_S in between so that jobs of one
host would overlap if anything let them, then writes ``<host>/<case>/result.json``.
One short O_APPEND write per line: lines of concurrent writers never interleave."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def record_case(run_dir: str, host: str, case: str) -> None:
    folder = Path(run_dir) / host
    (folder / case).mkdir(parents=True, exist_ok=True)
    log = folder / "intervals.log"
    _append(log, f"start {case} {os.getpid()} {time.time():.6f}")
    time.sleep(float(os.environ.get("FAKE_CASE_S", "0.3")))
    _append(log, f"end {case} {os.getpid()} {time.time():.6f}")
    verdict = {"host": host, "case": case, "verdict": "pass", "worker_pid": os.getpid()}
    (folder / case / "result.json").write_text(json.dumps(verdict))


def read_intervals(run_dir: Path, host: str, killed_at: dict[int, float] | None = None) -> list[tuple]:
    """(case, pid, start, end) per attempt; an attempt without an end was killed at
    ``killed_at[pid]`` (or still runs: end = now)."""
    starts, ends = {}, {}
    for line in (run_dir / host / "intervals.log").read_text().splitlines():
        kind, case, pid, t = line.split()
        (starts if kind == "start" else ends)[(case, int(pid))] = float(t)
    killed_at = killed_at or {}
    return sorted((case, pid, t0, ends.get((case, pid), killed_at.get(pid, time.time())))
                  for (case, pid), t0 in starts.items())
