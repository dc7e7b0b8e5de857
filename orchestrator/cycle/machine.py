"""The per-case cycle as an explicit state machine, each transition held to its own deadline.

    START -> PREFLIGHT -> ARMED -> TARGETED -> INJECTED -+-> PANICKED -+-> DUMPED --------------+
      |                                                  +-> LOST -----+-> WEDGED -> RECOVERED -+-> COLLECTED -> VERIFIED
      +-> SKIPPED                                        +-> SURVIVED --------------------------+
    SKIPPED: the kernel lacks what the case needs. Any failure -> INFRA_ERROR (verdict
    "error"). Afterwards, whatever happened, RESTORED once the case's changes are put back.

PANICKED: a panic line on the console. LOST: the host stopped answering, no panic line
seen (no console, or it was down). DUMPED: back by itself with a new boot (kdump, then
reboot). RECOVERED: back through the BMC (NMI or power cycle).

The work of each step is in collaborator modules (phases, observe, after_panic, judging);
they take frozen values and return the next (cycle/steps.py). The cycle only talks to
capability protocols and kernel/ knowledge; it never knows a rack server from a lab VM.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Callable

from orchestrator.config.playbook import Case
from orchestrator.cycle import after_panic, judging, observe, phases
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.outcome import case_run
from orchestrator.cycle.record import CaseRecord
from orchestrator.cycle.steps import LOST, PANICKED, RETURNED, CaseRun, Trail
from orchestrator.cycle.waitmeter import WaitMeter
from orchestrator.errors import InfraError, OrchestratorError
from orchestrator.results.model import ERROR, FAIL, PASS, SKIP


class State(enum.Enum):
    START = "start"
    PREFLIGHT = "preflight"
    SKIPPED = "skipped"
    ARMED = "armed"
    TARGETED = "targeted"
    INJECTED = "injected"
    PANICKED = "panicked"
    LOST = "lost"
    SURVIVED = "survived"
    WEDGED = "wedged"
    DUMPED = "dumped"
    RECOVERED = "recovered"
    COLLECTED = "collected"
    VERIFIED = "verified"
    RESTORED = "restored"
    INFRA_ERROR = "infra-error"


@dataclass(frozen=True)
class Step:
    name: str                           # what leaving the state does; names its errors
    deadlines: tuple[str, ...]          # the playbook deadlines it is held to
    leads_to: frozenset


def _step(name: str, deadlines: tuple[str, ...], *states: State) -> Step:
    return Step(name, deadlines, frozenset(states))


S = State
#: state -> the step that leaves it. Collecting a dump has no deadline of its own: its
#: commands carry kernel/kdump.py's timeouts; the "collect" deadline bounds a live read.
TRANSITIONS = {
    S.START: _step("preflight", ("preflight",), S.PREFLIGHT, S.SKIPPED),
    S.PREFLIGHT: _step("arm", ("arm",), S.ARMED),
    S.ARMED: _step("target", ("target",), S.TARGETED),
    S.TARGETED: _step("inject", ("inject",), S.INJECTED),
    S.INJECTED: _step("observe", ("panic", "survive"), S.PANICKED, S.LOST, S.SURVIVED),
    S.PANICKED: _step("await_reboot", ("dump",), S.DUMPED, S.WEDGED),
    S.LOST: _step("await_reboot", ("dump",), S.DUMPED, S.WEDGED),
    S.WEDGED: _step("recover", ("wedge", "nmi"), S.RECOVERED),
    S.DUMPED: _step("collect_dump", (), S.COLLECTED),
    S.RECOVERED: _step("collect_dump", (), S.COLLECTED),
    S.SURVIVED: _step("read_live", ("collect",), S.COLLECTED),
    S.COLLECTED: _step("verify", (), S.VERIFIED),
}


class CaseCycle:
    def __init__(self, handles: HostHandles, case: Case, *, expect_resolver: Callable | None = None,
                 on_state: Callable[[str, str], None] | None = None):
        meter = WaitMeter()
        # The cycle sees metered transports, so each phase knows how long it waited on the host.
        self.h = HostHandles(host=handles.host, shell=meter.wrap(handles.shell),
                             poll_shell=meter.wrap(handles.poll_shell), power=meter.wrap(handles.power),
                             console=meter.wrap(handles.console), kdump=handles.kdump, pause=meter.sleep)
        self.case = case
        self.resolve_expect = expect_resolver or (lambda case, shell: case.expect)
        report = on_state or (lambda host, state: None)
        self.record = CaseRecord(meter, lambda state: report(handles.host.name, state))
        self.trail = Trail()
        self.step = TRANSITIONS[S.START]     # the step under way: its name prefixes an error

    def run(self) -> CaseRun:
        """Drive the case to its end; return its result and artifacts. The lab's trouble and
        the kernel's are verdicts here, never exceptions."""
        try:
            state = self._drive()
            verdict = SKIP if state is S.SKIPPED else (FAIL if self.trail.reasons else PASS)
            reasons = [self.trail.preflight.skip_reason] if state is S.SKIPPED else list(self.trail.reasons)
        except InfraError as exc:
            verdict, reasons = self._infra_error(exc)
        except OrchestratorError as exc:
            verdict, reasons = ERROR, [f"{self.step.name}: {exc}"]
        except Exception as exc:  # noqa: BLE001 - one case's bug must not end the whole run
            verdict, reasons = ERROR, [f"{self.step.name}: internal error: {type(exc).__name__}: {exc}"]
        finally:
            self._restore()
        return case_run(self.h, self.case, self.trail, self.record, verdict, reasons)

    def _drive(self) -> State:
        state = S.START
        while state in TRANSITIONS:
            self.step = TRANSITIONS[state]
            begun = self.record.begin()
            deadlines = {name: float(self.case.deadlines[name]) for name in self.step.deadlines}
            state, note = getattr(self, "_" + self.step.name)(deadlines)
            if state not in self.step.leads_to:
                raise RuntimeError(f"step {self.step.name} led to {state.value}, not one of its states")
            self.record.enter(state.value, begun, note)
        return state

    def _infra_error(self, exc: InfraError) -> tuple[str, list[str]]:
        verdict, reasons = ERROR, [f"{self.step.name}: {exc}"]
        panic, pre = self.trail.panic_event(), self.trail.preflight
        if panic is not None and pre.expect.outcome == "survive":
            # The kernel failure was already seen; the lab's trouble afterwards does not undo it.
            verdict, reasons = FAIL, [f"console: the kernel panicked: {panic.text}", f"then: {exc}"]
        self.record.enter(S.INFRA_ERROR.value, self.record.begin(), str(exc))
        return verdict, reasons

    def _keep(self, **produced) -> None:
        self.trail = replace(self.trail, **produced)

    # -- the steps: each calls its collaborator, keeps what it produced, names the next state --
    def _preflight(self, d: dict) -> tuple[State, str]:
        pre = phases.preflight(self.h, self.case, self.resolve_expect, d["preflight"], self.record)
        self._keep(preflight=pre)
        return (S.SKIPPED if pre.skip_reason else S.PREFLIGHT), pre.before.kernel_release

    def _arm(self, d: dict) -> tuple[State, str]:
        self._keep(armed=phases.arm(self.h, self.case, d["arm"]))
        return S.ARMED, " ".join(f"{k}={v}" for k, v in self.case.sysctls)

    def _target(self, d: dict) -> tuple[State, str]:
        targeted = phases.pick_target(self.h, self.case, self.trail.preflight.page_size, d["target"], self.record)
        self._keep(targeted=targeted)
        return S.TARGETED, f"pfn {targeted.target.pfn:#x}"

    def _inject(self, d: dict) -> tuple[State, str]:
        injected, note = phases.inject(self.h, self.case, self.trail.targeted, d["inject"], self.record)
        self._keep(injected=injected)
        return S.INJECTED, note

    def _observe(self, d: dict) -> tuple[State, str]:
        observed, note = observe.observe(self.h, self.trail.preflight.expect, self.trail.injected, d, self.record)
        self._keep(observed=observed)
        return {PANICKED: S.PANICKED, LOST: S.LOST, RETURNED: S.SURVIVED}[observed.how], note

    def _await_reboot(self, d: dict) -> tuple[State, str]:
        try:
            back = after_panic.await_reboot(self.h, self.trail.preflight.before, d["dump"])
        except InfraError as exc:
            return S.WEDGED, str(exc)
        self._keep(back=back)
        return S.DUMPED, back.how

    def _recover(self, d: dict) -> tuple[State, str]:
        self._keep(back=after_panic.recover(self.h, self.trail.preflight.before, d, self.record))
        return S.RECOVERED, self.trail.back.how

    def _collect_dump(self, d: dict) -> tuple[State, str]:
        t = self.trail
        collected = after_panic.collect_dump(self.h, t.preflight.dumps_before, t.injected, self.record)
        self._keep(collected=collected)
        return S.COLLECTED, collected.dump.dump_id if collected.dump else "no new dump"

    def _read_live(self, d: dict) -> tuple[State, str]:
        back, collected = observe.read_survivor(self.h, d["collect"], self.record)
        self._keep(back=back, collected=collected)
        return S.COLLECTED, "live dmesg" if collected.live_dmesg is not None else "host stopped answering"

    def _verify(self, d: dict) -> tuple[State, str]:
        t = self.trail
        reasons = judging.verify(self.h, t.preflight.expect, before=t.preflight.before, targeted=t.targeted,
                                 injected=t.injected, observed=t.observed, back=t.back, collected=t.collected,
                                 record=self.record)
        self._keep(reasons=tuple(reasons))
        return S.VERIFIED, "ok" if not reasons else f"{len(reasons)} problem(s)"

    def _restore(self) -> None:
        """Whatever happened, put back what the case changed (best effort, cycle/phases.py)."""
        t, begun = self.trail, self.record.begin()
        before = t.preflight.before if t.preflight else None
        after = t.back.after if t.back else None
        if phases.restore(self.h, t.armed, t.targeted, before, after, float(self.case.deadlines["restore"]),
                          self.record):
            self.record.enter(S.RESTORED.value, begun)
