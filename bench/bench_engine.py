"""Benchmark of the distributed engine's dispatch latency; prints its figures (not a test).

    .venv/bin/python bench/bench_engine.py [--jobs 200] [--db DSN]

Dispatch latency = from ``defer`` (submit's call per job) to the case executor's first line
on an idle worker (a real ``orchestrator worker`` subprocess, concurrency 2, no-op executor
tests/engine_fake.py with FAKE_CASE_S=0). Each job is deferred only after the previous one
ended, and each has its own host (own lock), so every job meets an idle worker that only
LISTEN/NOTIFY (or the poll) can wake. Target: p50 <= 100 ms.

Without --db, a private PostgreSQL cluster is started in a temp folder (tests/pgcluster.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from orchestrator.fleet.engine.app import build_app, prepare_database, queue_for_lab  # noqa: E402
from orchestrator.fleet.engine.jobs import CaseJob, defer_case  # noqa: E402
from pgcluster import private_postgres  # noqa: E402

LAB = "bench"


def start_worker(dsn: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, ORCH_CASE_EXECUTOR="engine_fake:record_case", FAKE_CASE_S="0",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    argv = [sys.executable, "-m", "orchestrator", "worker", "--lab", LAB, "--db", dsn, "--concurrency", "2"]
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)


def wait_for_line(path: Path, prefix: str, timeout: float = 30.0) -> float:
    """The time recorded on the executor's line starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith(prefix):
                    return float(line.split()[-1])
        time.sleep(0.001)
    raise TimeoutError(f"no {prefix!r} in {path} within {timeout} s")


def measure(dsn: str, jobs: int, run_dir: Path) -> list[float]:
    app = build_app(dsn)
    latencies = []
    with app.open():
        for i in range(jobs + 1):
            host = f"h{i:04d}"
            deferred = time.time()
            defer_case(app, queue_for_lab(LAB), CaseJob("bench", str(run_dir), host, "noop"))
            started = wait_for_line(run_dir / host / "intervals.log", "start noop")
            wait_for_line(run_dir / host / "intervals.log", "end noop")
            time.sleep(0.02)            # let the worker record the job's end and go idle
            if i:                       # the first job pays the worker's imports: not dispatch
                latencies.append(started - deferred)
    return latencies


def measure_handoff(dsn: str, jobs: int, run_dir: Path) -> list[float]:
    """One host's cases queued at once: the gap from one case's end to the next one's start.
    procrastinate notifies only new jobs, so a job held back by its host lock waits for the
    worker's poll (tunables.ENGINE_POLL_S) unless the worker finds it right after its own job."""
    app = build_app(dsn)
    with app.open():
        for i in range(jobs):
            defer_case(app, queue_for_lab(LAB), CaseJob("handoff", str(run_dir), "one-host", f"c{i:03d}"))
    log = run_dir / "one-host" / "intervals.log"
    wait_for_line(log, f"end c{jobs - 1:03d}", timeout=jobs * 10.0)
    times = {tuple(line.split()[:2]): float(line.split()[-1]) for line in log.read_text().splitlines()}
    return [times[("start", f"c{i:03d}")] - times[("end", f"c{i - 1:03d}")] for i in range(1, jobs)]


def report(latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    print(f"dispatch latency, defer -> job start on an idle worker, {len(ms)} jobs:")
    print(f"  p50 {p(0.50):.1f} ms   p95 {p(0.95):.1f} ms   max {ms[-1]:.1f} ms   mean {statistics.mean(ms):.1f} ms")
    print(f"  target p50 <= 100 ms: {'met' if p(0.50) <= 100 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--db", help="an existing database (default: a private throwaway cluster)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.db or stack.enter_context(private_postgres())
        prepare_database(dsn)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-engine-")))
        worker = start_worker(dsn, folder / "worker.log")
        stack.callback(lambda: (worker.terminate(), worker.wait(timeout=15)))
        report(measure(dsn, args.jobs, folder / "run"))
        gaps = sorted(measure_handoff(dsn, 10, folder / "handoff"))
        print(f"one host's next case after the previous ended (lock release, {len(gaps)} gaps): "
              f"median {statistics.median(gaps) * 1000:.0f} ms, max {gaps[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
