"""Running a plan on its hosts from one controller: hosts in parallel, cases serial per host
(fleet/host_run.py), everything written into the run folder as it ends
(fleet/run_folder.py), so a controller that dies mid-run loses at most the case in flight
and ``run --resume`` carries on from the folder.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Callable, ContextManager

from orchestrator.config.model import Host
from orchestrator.fleet.host_handles import HostSession, open_host
from orchestrator.fleet.host_run import HostRun, OnState
from orchestrator.fleet.plan import RunPlan
from orchestrator.fleet.preparing import PreparingSlots, fleet_switch_interval
from orchestrator.fleet.run_folder import RunFolder
from orchestrator.results.model import RunResult
from orchestrator.tunables import MAX_HOSTS_PREPARING, SIGNAL_POLL_S


class Runner:
    def __init__(self, folder: RunFolder, *, open_host: Callable[..., ContextManager[HostSession]] = open_host,
                 on_state: OnState | None = None):
        self.folder = folder
        self.open_host = open_host
        self.on_state = on_state or (lambda host, case, state: None)
        self._stop = threading.Event()
        self._preparing = PreparingSlots(MAX_HOSTS_PREPARING)

    @classmethod
    def new(cls, plan: RunPlan, results_base: Path, **kw) -> "Runner":
        return cls(RunFolder.create(results_base, plan), **kw)

    @classmethod
    def resume(cls, run_dir: Path, **kw) -> "Runner":
        """Carry on an interrupted run in its own folder: finished cases are kept; the case
        that was in flight, and every case not yet started, run (again)."""
        return cls(RunFolder.open(run_dir), **kw)

    @property
    def run_dir(self) -> Path:
        return self.folder.run_dir

    def run(self) -> RunResult:
        """Run every host's remaining cases. On Ctrl-C, or a results folder that refuses writes,
        no new case starts: the cases in flight finish (a host mid-panic is left rebooted and
        restored, not half-armed)."""
        hosts = self.folder.plan.inventory.hosts
        with fleet_switch_interval(len(hosts)):
            return self._run(hosts)

    def _run(self, hosts: tuple[Host, ...]) -> RunResult:
        self.folder.assemble()
        pool = ThreadPoolExecutor(max_workers=max(1, len(hosts)), thread_name_prefix="host")
        # Every host thread is started before any begins: starting a thread waits for it to
        # run once, and with hosts already at work each start waited for the GIL (1,000
        # simulated hosts began over 7-15 s, bench/bench_fleet.py).
        go, futures = threading.Event(), []
        try:
            try:
                for h in hosts:         # a Ctrl-C among these still stops those submitted
                    futures.append(pool.submit(self._run_host, h, go))
            finally:
                go.set()
            _wait_for_hosts(futures)
        except KeyboardInterrupt:
            self._stopping()
            pool.shutdown(wait=True, cancel_futures=True)
            self.folder.assemble()
            raise
        except BaseException:
            # A host's thread failed: a results folder that refuses writes (nothing more can
            # be recorded: no case starts that could not be), or a bug. The cases in flight
            # still finish and restore their hosts before the run ends.
            self._stopping()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return self.folder.assemble()

    def _stopping(self) -> None:
        """No new case starts; the cases in flight finish."""
        self._stop.set()
        self._preparing.stop()

    def _run_host(self, host: Host, go: threading.Event) -> None:
        go.wait()
        done = self.folder.finished()
        remaining = [c for c in self.folder.plan.playbook.cases if (host.name, c.name) not in done]
        if remaining:
            HostRun(self.folder, host, stop=self._stop, open_host=self.open_host,
                    on_state=self.on_state, preparing=self._preparing).run(remaining)


def _wait_for_hosts(futures: list[Future]) -> None:
    """Until every host is done; a host's thread that failed raises here at once, not once
    every other host is done with its cases. Waited for in short slices: a Ctrl-C that the
    kernel delivered to a host thread only raises in the main thread once it runs again; a
    wait without a timeout sat through the whole next case (seen in the SIGINT drill)."""
    while True:
        done, pending = futures_wait(futures, timeout=SIGNAL_POLL_S, return_when=FIRST_EXCEPTION)
        for future in done:
            future.result()
        if not pending:
            return
