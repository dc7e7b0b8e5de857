"""Running a playbook on an inventory: hosts in parallel, cases serial per host.

Each host is opened once (fleet/host_handles.py: SSH, BMC power, SOL console), its facts
probed once, then its cases run one after another (fleet/case_run.py, the same path the
pytest face takes). Results are written after every case, atomically, so a
controller that dies mid-run loses at most the case in flight.
"""

from __future__ import annotations

import resource
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, ContextManager

from orchestrator import __version__
from orchestrator.config.model import Host, Inventory
from orchestrator.config.applicability import skip_reason
from orchestrator.config.playbook import Case, Playbook
from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import read_boot_facts
from orchestrator.cycle.outcome import no_cycle_result
from orchestrator.errors import OrchestratorError
from orchestrator.fleet.case_run import run_case
from orchestrator.fleet.host_handles import HostSession, open_host
from orchestrator.kernel.semantics import SemanticsUnknown
from orchestrator.kernel.sysctl import read_sysctls
from orchestrator.results import store
from orchestrator.results.model import ERROR, SKIP, CaseResult, HostFacts, RunResult

WATCHED_SYSCTLS = ("vm.panic_on_unrecoverable_memory_failure", "vm.memory_failure_recovery",
                   "vm.memory_failure_early_kill", "kernel.panic")


@dataclass(frozen=True)
class RunRequest:
    inventory: Inventory
    playbook: Playbook
    results_base: Path
    argv: tuple[str, ...] = ()


class Runner:
    def __init__(self, request: RunRequest, *, open_host: Callable[..., ContextManager[HostSession]] = open_host,
                 on_state: Callable[[str, str, str], None] | None = None):
        self.req = request
        self.open_host = open_host
        self.on_state = on_state or (lambda host, case, state: None)
        self.run_id, self.run_dir = store.new_run_dir(request.results_base)
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._lock = threading.Lock()
        self._cases: list[CaseResult] = []
        self._facts: dict[str, HostFacts] = {}
        self._stop = threading.Event()

    def run(self) -> RunResult:
        """Run every host's cases. On Ctrl-C no new case starts: the cases in flight finish
        (a host mid-panic is left rebooted, not half-armed), the rest are skipped."""
        hosts = self.req.inventory.hosts
        self._save()
        pool = ThreadPoolExecutor(max_workers=max(1, len(hosts)), thread_name_prefix="host")
        futures = [pool.submit(self._run_host, h) for h in hosts]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self._save()
            raise
        pool.shutdown(wait=True)
        return self._save()

    def _run_host(self, host: Host) -> None:
        """Open the host once, probe its facts once, then run its cases one after another."""
        with ExitStack() as stack:
            session, resolver = None, ExpectationResolver()
            try:
                session = stack.enter_context(self.open_host(
                    host, self.run_dir / host.name,
                    commands_log=store.case_dir(self.run_dir, host.name, "_host") / "commands.log"))
                self._facts[host.name] = self._probe(session.handles, resolver)
            except OrchestratorError as exc:
                self._facts[host.name] = HostFacts(host=host.name, arch=host.arch, platform=host.platform,
                                                   features=tuple(sorted(host.features)), error=str(exc))
            for case in self.req.playbook.cases:
                self._record(self._one_case(host, session, case, resolver))

    def _one_case(self, host: Host, session: HostSession | None, case: Case,
                  resolver: ExpectationResolver) -> CaseResult:
        if self._stop.is_set():
            return no_cycle_result(host.name, case, SKIP, "interrupted before this case started")
        why = skip_reason(host, case)
        if why is not None:
            return no_cycle_result(host.name, case, SKIP, why)
        if session is None:
            return no_cycle_result(host.name, case, ERROR, f"preflight: {self._facts[host.name].error}")
        return run_case(session, case, resolver, store.case_dir(self.run_dir, host.name, case.name),
                        run_dir=self.run_dir, on_state=lambda h, s, c=case.name: self.on_state(h, c, s))

    def _probe(self, handles: HostHandles, resolver: ExpectationResolver) -> HostFacts:
        facts = read_boot_facts(handles.poll_shell)
        sysctls = read_sysctls(handles.shell, WATCHED_SYSCTLS)
        host = handles.host
        try:
            semantics = resolver.probe(handles.shell)
            name, evidence = semantics.name, semantics.evidence
        except SemanticsUnknown as exc:
            # recorded, not fatal: only `outcome: matrix` cases need it, and they say so
            name, evidence = None, (f"undetermined: {exc}",)
        return HostFacts(host=host.name, arch=host.arch, platform=host.platform,
                         kernel_release=facts.kernel_release, boot_id=facts.boot_id,
                         sysctls={k: v for k, v in sysctls.items()}, semantics=name,
                         semantics_evidence=tuple(evidence), features=tuple(sorted(host.features)))

    def _record(self, result: CaseResult) -> None:
        with self._lock:
            self._cases.append(result)
        self.on_state(result.host, result.case, f"done:{result.verdict}")
        self._save()

    def _save(self) -> RunResult:
        with self._lock:
            hosts = tuple(self._facts[h.name] for h in self.req.inventory.hosts if h.name in self._facts)
            run = RunResult(
                run_id=self.run_id, started_at=self.started_at,
                finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                inventory_path=str(self.req.inventory.path), inventory_digest=self.req.inventory.digest,
                playbook_path=str(self.req.playbook.path), playbook_digest=self.req.playbook.digest,
                hosts=hosts, cases=tuple(self._cases),
                controller={"version": __version__, "python": sys.version.split()[0], "argv": list(self.req.argv),
                            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
            )
            store.write_run(self.run_dir, run)
            return run

