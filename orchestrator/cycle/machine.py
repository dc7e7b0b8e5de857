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
from orchestrator.cycle import after_panic, judging, observe, phases, sel_window
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.outcome import case_run
from orchestrator.cycle.prefetch import PrefetchShell
from orchestrator.cycle.record import CaseRecord
from orchestrator.cycle.steps import LOST, PANICKED, RETURNED, CaseRun, Trail, Verdict
from orchestrator.cycle.waitmeter import WaitMeter
from orchestrator.errors import KERNEL, ORCHESTRATOR, InfraError, OrchestratorError
from orchestrator.kernel.injectors import injector as make_injector
from orchestrator.results.model import ERROR, FAIL, SKIP


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
    S.SURVIVED: _step("read_live", ("collect",), S.COLLECTED, S.LOST),
    S.COLLECTED: _step("verify", (), S.VERIFIED),
}


class CaseCycle:
    def __init__(self, handles: HostHandles, case: Case, *, expect_resolver: Callable | None = None,
                 on_state: Callable[[str, str], None] | None = None, run_id: str = "adhoc"):
        meter = WaitMeter()
        # The cycle sees metered transports, so each phase knows how long it waited on the host.
        # ... and a shell that answers the commands a step sends ahead (cycle/ahead.py).
        self.h = HostHandles(host=handles.host, shell=meter.wrap(PrefetchShell(handles.shell)),
                             poll_shell=meter.wrap(handles.poll_shell), power=meter.wrap(handles.power),
                             console=meter.wrap(handles.console), kdump=handles.kdump, pause=meter.sleep,
                             per_boot=handles.per_boot, firmware=meter.wrap(handles.firmware),
                             event_log=meter.wrap(handles.event_log))
        self.case, self.run_id = case, run_id
        self.resolve_expect = expect_resolver or (lambda case, shell, **_: case.expect)
        report = on_state or (lambda host, state: None)
        self.record = CaseRecord(meter, lambda state: report(handles.host.name, state))
        self.trail = Trail()
        self.step = TRANSITIONS[S.START]     # the step under way: its name prefixes an error

    def run(self) -> CaseRun:
        """Drive the case to its end; return its result and artifacts. The lab's trouble and
        the kernel's are verdicts here, never exceptions."""
        try:
            state = self._drive()
            if state is S.SKIPPED:
                verdict = Verdict(SKIP, (self.trail.preflight.skip_reason,))
            else:
                verdict = Verdict.judged(self.trail.reasons)
        except InfraError as exc:
            verdict = self._infra_error(exc)
        except OrchestratorError as exc:
            verdict = Verdict(ERROR, (f"{self.step.name}: {exc}",), ORCHESTRATOR)
        except Exception as exc:  # noqa: BLE001 - one case's bug must not end the whole run
            verdict = Verdict(ERROR, (f"{self.step.name}: internal error: {type(exc).__name__}: {exc}",), ORCHESTRATOR)
        verdict = self._restore(verdict)
        sel_window.read(self.h, self.trail.sel_mark, self.record)   # a case that ended before verify
        return case_run(self.h, self.case, self.trail, self.record, verdict)

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

    def _infra_error(self, exc: InfraError) -> Verdict:
        verdict = Verdict(ERROR, (f"{self.step.name}: {exc}",), exc.blame)
        panic, pre = self.trail.panic_event(), self.trail.preflight
        if panic is not None and pre.expect.outcome == "survive":
            # The kernel failure was already seen; the lab's trouble afterwards does not undo it.
            verdict = Verdict(FAIL, (f"console: the kernel panicked: {panic.text}", f"then: {exc}"), KERNEL)
        self.record.enter(S.INFRA_ERROR.value, self.record.begin(), str(exc))
        return verdict

    def _keep(self, **produced) -> None:
        self.trail = replace(self.trail, **produced)

    def _armed_boot_is_gone(self) -> bool:
        observed = self.trail.observed
        return observed is not None and observed.how in (PANICKED, LOST) and self.trail.back is None

    # -- the steps: each calls its collaborator, keeps what it produced, names the next state --
    def _preflight(self, d: dict) -> tuple[State, str]:
        pre = phases.preflight(self.h, self.case, self.resolve_expect, d["preflight"], self.record)
        self._keep(preflight=pre)
        return (S.SKIPPED if pre.skip_reason else S.PREFLIGHT), pre.before.kernel_release

    def _arm(self, d: dict) -> tuple[State, str]:
        self._keep(armed=phases.arm(self.h, self.case, d["arm"], run_id=self.run_id,
                                    boot_id=self.trail.preflight.before.boot_id))
        return S.ARMED, " ".join(f"{k}={v}" for k, v in self.case.sysctls)

    def _target(self, d: dict) -> tuple[State, str]:
        targeted = phases.pick_target(self.h, self.case, self.trail.preflight.page_size, d["target"], self.record)
        self._keep(targeted=targeted)
        return S.TARGETED, f"pfn {targeted.target.pfn:#x}"

    def _inject(self, d: dict) -> tuple[State, str]:
        self._keep(sel_mark=sel_window.mark(self.h, self.record))
        injected, note = phases.inject(self.h, self.case, self.trail.targeted, d["inject"], self.record,
                                       run_id=self.run_id)
        self._keep(injected=injected)
        return S.INJECTED, note

    def _observe(self, d: dict) -> tuple[State, str]:
        observed, note = observe.observe(self.h, self.trail.preflight.expect, self.trail.injected, d, self.record,
                                         settle_s=phases.settle_time(self.case))
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
        collected = after_panic.collect_dump(self.h, t.preflight.dumps_before, t.injected, self.record,
                                             then=phases.restore_ahead(self.h, t.armed, t.back.after.boot_id if t.back.after else None))
        self._keep(collected=collected)
        return S.COLLECTED, collected.dump.dump_id if collected.dump else "no new dump"

    def _read_live(self, d: dict) -> tuple[State, str]:
        back, collected = observe.read_survivor(
            self.h, self.trail.injected, d["collect"], self.record, refusal=make_injector(self.case.injector).refusal,
            then=phases.restore_ahead(self.h, self.trail.armed, self.trail.preflight.before.boot_id))
        if back.after is None or back.after.boot_id != self.trail.preflight.before.boot_id:
            # It did not keep running: a panic the console missed (seen on the lab: 6 bytes of the
            # panic line lost in QEMU's own serial log, 1 machine-check panic in 11). Its dump,
            # not a survivor's dmesg, is the evidence; the verifier blames the console for the gap.
            self._keep(observed=replace(self.trail.observed, how=LOST))
            return S.LOST, "the host did not keep its boot after the injection returned"
        self._keep(back=back, collected=collected)
        return S.COLLECTED, "live dmesg"

    def _verify(self, d: dict) -> tuple[State, str]:
        t = self.trail
        reasons = judging.verify(self.h, t.preflight.expect, before=t.preflight.before, targeted=t.targeted,
                                 injected=t.injected, observed=t.observed, back=t.back, collected=t.collected,
                                 record=self.record)
        sel_records = sel_window.read(self.h, t.sel_mark, self.record)
        self._keep(sel_mark=None)      # read: the records are in the evidence
        reasons += sel_window.judge(t.preflight.expect.sel, sel_records)
        self._keep(reasons=tuple(reasons))
        return S.VERIFIED, "ok" if not reasons else f"{len(reasons)} problem(s)"

    def _restore(self, verdict: Verdict) -> Verdict:
        """Whatever happened, put back what the case changed (cycle/phases.py). A host that
        cannot be put back is never a pass: it is reported left armed, with the reason."""
        t, begun = self.trail, self.record.begin()
        try:
            done = phases.restore(self.h, t.armed, t.targeted, t.back.after if t.back else None,
                                  float(self.case.deadlines["restore"]), self.record)
        except OrchestratorError as exc:
            if self._armed_boot_is_gone():
                # The kernel that was armed died and the host is not back: nothing armed runs.
                # Its journal stays on the host; the next preflight (or disarm) finishes this.
                self.record.note_recovery(f"restore: not done, the host is not back: {exc}")
                return verdict
            self.record.enter(S.INFRA_ERROR.value, begun, f"left armed: {exc}")
            return verdict.left_armed(f"restore: {exc}")
        if done is not None:
            self.record.enter(S.RESTORED.value, begun, done)
        return verdict
