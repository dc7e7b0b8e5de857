"""Running a playbook on an inventory: hosts in parallel, cases serial per host.

Each host gets its transports once (SSH, BMC power, SOL console), its facts probed once,
then its cases one after another. Results are written after every case, atomically, so a
controller that dies mid-run loses at most the case in flight.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from orchestrator import __version__
from orchestrator.config.model import Host, Inventory
from orchestrator.config.playbook import Case, Playbook
from orchestrator.cycle.outcome import no_cycle_result
from orchestrator.cycle.machine import CaseCycle, HostHandles
from orchestrator.errors import OrchestratorError
from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.cycle.hostwait import read_boot_facts
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


class CommandLog:
    """Where a host's SSH commands are logged; the runner points it at each case's folder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file: Path | None = None

    def point_at(self, path: Path | None) -> None:
        with self._lock:
            self._file = path

    def __call__(self, text: str) -> None:
        with self._lock:
            if self._file is not None:
                with self._file.open("a") as fh:
                    fh.write(f"{datetime.now(timezone.utc).isoformat(timespec='milliseconds')} {text}\n")


def skip_reason(host: Host, case: Case) -> str | None:
    """Why ``case`` does not apply to ``host`` per the case's limits (None: it applies)."""
    lim = case.limits
    if lim.arches and host.arch not in lim.arches:
        return f"case is limited to arches {', '.join(lim.arches)}; host is {host.arch}"
    if lim.platforms and host.platform not in lim.platforms:
        return f"case is limited to platforms {', '.join(lim.platforms)}; host is {host.platform}"
    # an injector's inventory feature carries the injector's name
    missing = [f for f in (*lim.features, case.injector) if f not in host.features]
    if missing:
        return f"host lacks feature(s) {', '.join(missing)}"
    if case.kdump == "required" and case.expect.outcome != "survive" and "kdump" not in host.features:
        return "host lacks feature kdump"
    return None


class Runner:
    def __init__(self, request: RunRequest, *, transports: Callable[[Host, CommandLog, Path], HostHandles],
                 on_state: Callable[[str, str, str], None] | None = None):
        self.req = request
        self.make_handles = transports
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
        log = CommandLog()
        handles = None
        try:
            log.point_at(store.case_dir(self.run_dir, host.name, "_host") / "commands.log")
            handles = self.make_handles(host, log, self.run_dir / host.name)
            resolver = ExpectationResolver()
            self._facts[host.name] = self._probe(handles, resolver)
        except OrchestratorError as exc:
            self._facts[host.name] = HostFacts(host=host.name, arch=host.arch, platform=host.platform,
                                               features=tuple(sorted(host.features)), error=str(exc))
        for case in self.req.playbook.cases:
            if self._stop.is_set():
                self._record(no_cycle_result(host.name, case, SKIP, "interrupted before this case started"))
                continue
            why = skip_reason(host, case)
            if why is None and handles is None:
                self._record(no_cycle_result(host.name, case, ERROR, f"preflight: {self._facts[host.name].error}"))
                continue
            if why is not None:
                self._record(no_cycle_result(host.name, case, SKIP, why))
                continue
            folder = store.case_dir(self.run_dir, host.name, case.name)
            log.point_at(folder / "commands.log")
            cycle = CaseCycle(handles, case, expect_resolver=resolver,
                              on_state=lambda h, s, c=case.name: self.on_state(h, c, s))
            result = cycle.run()
            self._record(self._with_artifacts(result, handles, cycle, folder))
        if handles is not None:
            close_handles(handles)

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

    def _with_artifacts(self, result: CaseResult, handles: HostHandles, cycle: CaseCycle, folder: Path) -> CaseResult:
        artifacts = {}
        rel = lambda p: str(p.relative_to(self.run_dir))  # noqa: E731 - one-liner used four times below
        if handles.console is not None:
            lines = handles.console.lines(cycle.ctx.console_mark)
            base = cycle.ctx.inject_t or cycle.ctx.started
            text = "".join(f"[{line.t - base:+10.3f}] {line.text}\n" for line in lines)
            store.write_atomic(folder / "console.log", text)
            artifacts["console.log"] = rel(folder / "console.log")
        if (folder / "commands.log").exists():
            artifacts["commands.log"] = rel(folder / "commands.log")
        dump = cycle.ctx.dump
        if dump is not None and dump.dmesg:
            store.write_atomic(folder / "dmesg", dump.dmesg)
            artifacts["dmesg"] = rel(folder / "dmesg")
        meta = {"case": result.case, "host": result.host, "verdict": result.verdict, "pfn": result.pfn,
                "dump": result.dump, "boot_id_before": result.boot_id_before, "boot_id_after": result.boot_id_after,
                "panic_after_inject_s": result.panic_after_inject_s, "recovery": list(result.recovery)}
        store.write_atomic(folder / "metadata.json", json.dumps(meta, indent=2, sort_keys=True))
        artifacts["metadata.json"] = rel(folder / "metadata.json")
        return replace(result, artifacts=artifacts)

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


def close_handles(handles: HostHandles) -> None:
    for part in (handles.console, handles.power, handles.shell, handles.poll_shell):
        try:
            if part is not None:
                part.close()
        except Exception:  # noqa: BLE001 - closing must never hide the run's results
            pass
