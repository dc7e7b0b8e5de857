"""One host's cases, one after another, into a run folder: the unit both the local runner
(a thread per host) and a fleet worker (one queued case at a time) hand a host to.

Per case: its limits (skip), the host's lease (an error naming the holder, and nothing
injected, when someone else has it), the cycle (fleet/case_run.py), the result written as
it ends. After an infrastructure error the host gets one quick look; a host that does not
answer it is lost, and its remaining cases end at once naming the case where it was lost
instead of each waiting out its own deadlines.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

from orchestrator.config.applicability import skip_reason
from orchestrator.config.model import Host
from orchestrator.config.playbook import Case
from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.cycle.hostwait import read_boot_facts
from orchestrator.cycle.machine import State
from orchestrator.cycle.outcome import no_cycle_result
from orchestrator.errors import KDUMP, LAB, InfraError, OrchestratorError
from orchestrator.fleet.case_run import run_case
from orchestrator.fleet.facts import probe_host_facts
from orchestrator.fleet.host_handles import HostSession, open_host
from orchestrator.fleet.lease import Holder, LeaseHeld
from orchestrator.fleet.lease_keeper import LeaseKeeper, case_budget
from orchestrator.fleet.preparing import PreparingSlots
from orchestrator.fleet.run_folder import RunFolder
from orchestrator.results import store
from orchestrator.results.model import ERROR, SKIP, CaseResult, HostFacts
from orchestrator.tunables import HOST_ALIVE_PROBE_S, SEMANTICS_PROBE_TTL_S

OnState = Callable[[str, str, str], None]      # (host, case, state)


class _Stopped(Exception):
    """The run stopped before this host was opened."""


@dataclass
class _Lost:
    case: str
    why: str


class HostRun:
    def __init__(self, folder: RunFolder, host: Host, *, stop: threading.Event | None = None,
                 open_host: Callable[..., ContextManager[HostSession]] = open_host,
                 on_state: OnState | None = None, lease_wait_s: float | None = None,
                 release_between_cases: bool = False, preparing: PreparingSlots | None = None):
        self.folder, self.host = folder, host
        self.stop = stop or threading.Event()
        self.open_host = open_host
        self.on_state = on_state or (lambda host, case, state: None)
        self.lease_wait_s = folder.plan.lease_wait_s if lease_wait_s is None else lease_wait_s
        self.release_between_cases = release_between_cases     # the pytest face: siblings take turns
        self.preparing = preparing or PreparingSlots()          # shared by the run's hosts
        self.holder = Holder.for_run(folder.run_id)
        self.resolver = ExpectationResolver(host)   # the host's semantics, once per boot
        self.session: HostSession | None = None
        self.keeper: LeaseKeeper | None = None
        self.lost: _Lost | None = None

    def run(self, cases: list[Case]) -> None:
        """Open the host once, record its facts, then its cases one after another."""
        with self.opened(first=cases[0] if cases else None):
            for case in cases:
                self.run_one(case)

    @contextmanager
    def opened(self, first: Case | None = None) -> Iterator["HostRun"]:
        """The host's handles, open until the block ends, its facts recorded. A host that
        cannot be reached is lost from the start: every case run meanwhile is an error.
        ``first``: the case to come, whose lease is taken while the host is opened."""
        host_dir = self.folder.run_dir / store.safe_name(self.host.name)
        log = store.case_dir(self.folder.run_dir, self.host.name, "_host") / "commands.log"
        with ExitStack() as stack, self.preparing.slot() as prepared:
            try:
                if self.stop.is_set():      # stopped while this host waited for its slot: its cases
                    raise _Stopped()        # end without a cycle, and nothing is probed
                self.session = stack.enter_context(self.open_host(self.host, host_dir, commands_log=log))
                self.keeper = LeaseKeeper(self.session.lease_shell, self.host.name, self.host.state_dir, self.holder)
                # the lease for the ``first`` case taken meanwhile (none when each case gives it back)
                self.keeper.warm_up(case_budget(first) if first and not self.release_between_cases else None)
                # the host's own shell is done with it by then: the release takes its connection
                stack.callback(lambda: self.keeper.release(connection_of=self.session.handles.shell))
                self.folder.record_facts(probe_host_facts(self.session.handles, self.resolver,
                                                          may_inject=self._lease_for_probe))
                if self.release_between_cases:
                    self.keeper.release()
            except _Stopped:
                pass
            except OrchestratorError as exc:
                self.folder.record_facts(HostFacts(host=self.host.name, arch=self.host.arch,
                                                   platform=self.host.platform,
                                                   features=tuple(sorted(self.host.features)), error=str(exc)))
                self.lost = _Lost("preflight", str(exc))
            prepared()
            yield self
        self.session = None

    def _lease_for_probe(self) -> bool:
        """The slab probe changes the panic sysctl for a moment: only under the host's lease
        (never while someone else's case may be armed); held by another, the cases probe."""
        try:
            self.keeper.take(SEMANTICS_PROBE_TTL_S, 0)
        except (LeaseHeld, InfraError):
            return False
        return True

    def run_one(self, case: Case) -> CaseResult:
        """One case, recorded in the run folder; the host must be ``opened``."""
        result, durable = self._one_case(case)
        self.folder.record(result, durable=durable)
        self.on_state(self.host.name, case.name, f"done:{result.verdict}")
        return result

    def _without_cycle(self, case: Case) -> tuple[CaseResult, bool]:
        """A case that cannot start a cycle, and whether a resumed run keeps its verdict."""
        if self.stop.is_set():
            return no_cycle_result(self.host.name, case, SKIP, "interrupted before this case started"), False
        why = skip_reason(self.host, case)
        if why is not None:
            return no_cycle_result(self.host.name, case, SKIP, why), True
        lost = self.lost
        where = "preflight" if lost.case == "preflight" else f"host lost in case {lost.case}"
        return no_cycle_result(self.host.name, case, ERROR, f"{where}: {lost.why}", LAB), True

    def _one_case(self, case: Case) -> tuple[CaseResult, bool]:
        session = self.session
        if self.stop.is_set() or skip_reason(self.host, case) is not None or self.lost is not None:
            return self._without_cycle(case)
        folder = store.case_dir(self.folder.run_dir, self.host.name, case.name)
        try:
            self.keeper.take(case_budget(case), self.lease_wait_s)
        except LeaseHeld as held:
            return no_cycle_result(self.host.name, case, ERROR, f"{held}; nothing was injected", LAB), True
        except InfraError as exc:
            return no_cycle_result(self.host.name, case, ERROR, f"lease: {exc}", LAB), True
        try:
            with self.preparing.slot() as prepared:     # given back once injected
                if self.stop.is_set():                  # stopped while it waited for the slot
                    return self._without_cycle(case)
                result = run_case(session, case, self.resolver, folder, run_dir=self.folder.run_dir,
                                  on_state=lambda host, state: self._reached(case, state, prepared),
                                  run_id=self.folder.run_id)
        finally:
            if self.release_between_cases:
                self.keeper.release()
        if result.verdict == ERROR and result.blame in (LAB, KDUMP) and not self._answers(session):
            self.lost = _Lost(case.name, result.reasons[0] if result.reasons else "no answer")
        return result, True

    def _reached(self, case: Case, state: str, prepared: Callable[[], None]) -> None:
        if state == State.INJECTED.value:
            prepared()
        self.on_state(self.host.name, case.name, state)

    def _answers(self, session: HostSession) -> bool:
        try:
            read_boot_facts(session.handles.poll_shell, timeout=HOST_ALIVE_PROBE_S)
            return True
        except OrchestratorError:
            session.handles.poll_shell.close()
            return False
