"""The fleet engine end to end: a private PostgreSQL, two `orchestrator worker` processes and
two virtual-lab machines. One worker is SIGKILLed while it runs a case; the other takes its
job over and the run completes, every host's cases strictly one after another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.fleet import lease
from orchestrator.results.store import load_run
from orchestrator.transports.ssh import FabricShell
from test_e2e_fleet import H1, H2, PLAYBOOK, host_interval
from test_engine import _stop as stop_workers
from vlabs import private_lab

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64]
REPO = Path(__file__).resolve().parent.parent
CASES = ("survive-a", "survive-c")
#: Short engine timings: a worker silent 3 s is dead, its job waits 1 s more.
FAST_WORKER = ["--heartbeat", "0.5", "--stalled-after", "3", "--retry-delay", "1"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    yield from private_lab(tmp_path_factory, arch="x86_64", hosts=2)


def orchestrator(*args: str, log: Path | None = None) -> subprocess.Popen:
    out = log.open("w") if log else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO, text=True,
                            stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def lease_holder_pid(inventory: Path, host: str) -> int | None:
    cfg = load_inventory(inventory).host(host)
    shell = FabricShell(cfg.ssh)
    try:
        held = lease.read(shell, host, cfg.state_dir)
    finally:
        shell.close()
    pid = held.get("controller", "").rpartition(":")[2]
    return int(pid) if pid.isdigit() else None


def test_a_worker_killed_mid_case_is_replaced_and_each_host_stays_serial(lab, pg_dsn, tmp_path):
    workers = [orchestrator("worker", "--lab", "e2e", "--db", pg_dsn, "--concurrency", "2", *FAST_WORKER,
                            log=tmp_path / f"worker{i}.log") for i in (1, 2)]
    try:
        sub = orchestrator("submit", "-i", str(lab), str(PLAYBOOK), "--cases", ",".join(CASES), "--lab", "e2e",
                           "--db", pg_dsn, "--results", str(tmp_path / "results"))
        out, err = sub.communicate(timeout=60)
        assert sub.returncode == 0, err
        run_dir = Path(out.strip().splitlines()[-1])
        victim = _wait_for_a_worker_on(lab, H1, {w.pid for w in workers})
        os.kill(victim, signal.SIGKILL)                  # mid-case: it holds the lease of H1
        expected = [run_dir / h / c / "result.json" for h in (H1, H2) for c in CASES]
        deadline = time.monotonic() + 420
        while not all(p.exists() for p in expected) and time.monotonic() < deadline:
            time.sleep(1)
        assert all(p.exists() for p in expected), [str(p) for p in expected if not p.exists()]
    finally:
        stop_workers(workers)
    run = load_run(run_dir)
    assert sorted((c.host, c.case, c.verdict) for c in run.cases) == \
        sorted((h, c, "pass") for h in (H1, H2) for c in CASES), [c.reasons for c in run.cases]
    for host in (H1, H2):
        first, second = (host_interval(run_dir / host / c) for c in CASES)
        assert second[0] >= first[1] or first[0] >= second[1], f"two cases on {host} at once"


def _wait_for_a_worker_on(inventory: Path, host: str, worker_pids: set[int], timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = lease_holder_pid(inventory, host)
        if pid in worker_pids:
            return pid
        time.sleep(0.2)
    raise AssertionError(f"no worker took {host}'s lease within {timeout} s")
