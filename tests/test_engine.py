"""The distributed engine (orchestrator/fleet/engine/) on a private PostgreSQL: submit
queues a run's (host, case) jobs, workers run them as real subprocesses
(``python -m orchestrator worker``) with a fake case executor that records each attempt's
start and end per host (tests/engine_fake.py). Proven from those intervals:

  * the cases of one host never overlap, while different hosts do run in parallel;
  * a worker killed with SIGKILL mid-case: the other worker retries its job and the run
    completes, still strictly serial per host;
  * a database that does not answer: one line on stderr, exit 3, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine_fake import read_intervals

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventories" / "example-rack.yaml"
PLAYBOOK = REPO / "playbooks" / "nightly.yaml"
HOSTS = ("altra-01", "altra-02", "spr-07")
CASES = ("rodata-on-hwpoison", "rodata-on-hardoff", "text-on-hwpoison")
#: Short engine timings for tests: a worker silent 2 s is dead, its job waits 0.5 s more.
FAST_WORKER = ["--heartbeat", "0.4", "--stalled-after", "2", "--retry-delay", "0.5"]


def _env(**extra: str) -> dict[str, str]:
    # example-rack.yaml takes its BMC password from the environment, as a real lab's would
    env = dict(os.environ, ORCH_CASE_EXECUTOR="engine_fake:record_case", PYTHONUNBUFFERED="1",
               LAB_BMC_PASSWORD="not-used-by-the-fake-executor",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    env.update(extra)
    return env


def _submit(dsn: str, lab: str, results: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "orchestrator", "submit", "-i", str(INVENTORY), str(PLAYBOOK), "--lab", lab,
            "--cases", ",".join(CASES), "--results", str(results), "--db", dsn, *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=60)


def _start_worker(dsn: str, lab: str, log: Path, **env: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "orchestrator", "worker", "--lab", lab, "--db", dsn, "--concurrency", "2",
            *FAST_WORKER]
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env(**env), cwd=REPO)


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _latest_worker_id(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate_workers").fetchone()[0]


def _wait_for_workers(dsn: str, after_id: int, count: int, timeout: float = 20.0) -> None:
    """Until ``count`` workers newer than ``after_id`` have registered in the database."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT count(*) FROM procrastinate_workers WHERE id > %s",
                            (after_id,)).fetchone()[0] >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"{count} workers did not register within {timeout} s")


def _wait_for_results(run_dir: Path, hosts=HOSTS, timeout: float = 40.0) -> None:
    expected = [run_dir / h / c / "result.json" for h in hosts for c in CASES]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.exists() for p in expected):
            return
        time.sleep(0.1)
    missing = [str(p.relative_to(run_dir)) for p in expected if not p.exists()]
    raise AssertionError(f"run did not complete within {timeout} s; missing {missing}")


def _assert_serial(intervals: list[tuple]) -> None:
    ordered = sorted(intervals, key=lambda i: i[2])
    for earlier, later in zip(ordered, ordered[1:]):
        assert later[2] >= earlier[3], f"overlap on one host: {earlier} and {later}"


def _submitted_run(dsn: str, lab: str, tmp_path: Path) -> Path:
    done = _submit(dsn, lab, tmp_path / "results")
    assert done.returncode == 0, done.stderr
    run_dir = Path(done.stdout.strip())
    request = json.loads((run_dir / "run-request.json").read_text())
    assert request["lab"] == lab and request["hosts"] == list(HOSTS) and request["cases"] == list(CASES)
    assert request["run_id"] == run_dir.name
    return run_dir


def test_one_host_is_serial_while_hosts_run_in_parallel(pg_dsn, tmp_path):
    # both workers wait idle before the submit, so both are woken by it and both take jobs
    newest = _latest_worker_id(pg_dsn)
    workers = [_start_worker(pg_dsn, "site-a", tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        _wait_for_workers(pg_dsn, newest, 2)
        run_dir = _submitted_run(pg_dsn, "site-a", tmp_path)
        _wait_for_results(run_dir)
    finally:
        _stop(workers)
    per_host = {h: read_intervals(run_dir, h) for h in HOSTS}
    for host, intervals in per_host.items():
        assert sorted(i[0] for i in intervals) == sorted(CASES), f"{host}: each case exactly once"
        _assert_serial(intervals)
    every = [i for intervals in per_host.values() for i in intervals]
    parallel = any(a[2] < b[3] and b[2] < a[3] for a in every for b in every if a is not b)
    assert parallel, "different hosts never ran at once"
    assert len({i[1] for i in every}) == 2, "both workers took jobs"


def test_a_killed_workers_job_is_retried_by_the_other(pg_dsn, tmp_path):
    run_dir = _submitted_run(pg_dsn, "site-b", tmp_path)
    victim = _start_worker(pg_dsn, "site-b", tmp_path / "victim.log", FAKE_CASE_S="1.0")
    log = run_dir / HOSTS[0] / "intervals.log"
    deadline = time.monotonic() + 20
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.exists(), "the first worker never started a case"
    survivor = _start_worker(pg_dsn, "site-b", tmp_path / "survivor.log", FAKE_CASE_S="0.3")
    victim.send_signal(signal.SIGKILL)
    killed_at = {victim.pid: time.time()}
    victim.wait()
    try:
        _wait_for_results(run_dir)
    finally:
        _stop([survivor])
    in_flight = []
    for host in HOSTS:
        intervals = read_intervals(run_dir, host, killed_at)
        _assert_serial(intervals)                     # the killed attempt ends at the kill
        assert {i[0] for i in intervals} == set(CASES)
        ended = {(line.split()[1], int(line.split()[2])) for line in
                 (run_dir / host / "intervals.log").read_text().splitlines() if line.startswith("end")}
        in_flight += [(host, case) for case, pid, *_ in intervals if pid == victim.pid and (case, pid) not in ended]
    assert in_flight, "the killed worker had no case in flight"
    for host, case in in_flight:                      # retried, and finished by the survivor
        result = json.loads((run_dir / host / case / "result.json").read_text())
        assert result["worker_pid"] == survivor.pid, (host, case)


def test_the_same_case_of_a_run_cannot_be_queued_twice(pg_dsn, tmp_path):
    from procrastinate.exceptions import AlreadyEnqueued

    from orchestrator.fleet.engine.app import build_app, queue_for_lab
    from orchestrator.fleet.engine.jobs import CaseJob, defer_case

    job = CaseJob("run-1", str(tmp_path), "altra-01", "rodata-on-hwpoison")
    app = build_app(pg_dsn)
    with app.open():
        defer_case(app, queue_for_lab("site-d"), job)
        with pytest.raises(AlreadyEnqueued):
            defer_case(app, queue_for_lab("site-d"), job)


def test_submit_to_an_unreachable_database_is_one_line_exit_3(tmp_path):
    done = _submit("postgresql://nobody@127.0.0.1:1/memfail", "site-c", tmp_path / "results")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_submit_with_a_malformed_dsn_is_bad_input(tmp_path):
    done = _submit("not a dsn", "site-c", tmp_path / "results")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--db" in done.stderr and "Traceback" not in done.stderr


def test_the_case_executor_seam(monkeypatch):
    from orchestrator.errors import ConfigError
    from orchestrator.fleet.engine import jobs

    monkeypatch.delenv(jobs.CASE_EXECUTOR_ENV, raising=False)
    with pytest.raises(ConfigError, match="run-request.json"):      # the real executor reads the run folder
        jobs.run_case("/nowhere", "altra-01", "rodata-on-hwpoison")
    monkeypatch.setenv(jobs.CASE_EXECUTOR_ENV, "orchestrator.fleet.engine.execute:no_such_function")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        jobs.case_executor()
