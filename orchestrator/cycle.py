"""The per-case cycle as an explicit state machine, each transition with its own deadline.

    PREFLIGHT -> ARMED -> TARGETED -> INJECTED -+-> PANICKED -> DUMPED -> REBOOTED -+-> COLLECTED -> VERIFIED -> RESTORED
                                                 |   (no reboot in time: WEDGED -> NMI / power cycle)  |
                                                 +-> SURVIVED -------------------------------------------+
    any state -> INFRA_ERROR (verdict "error"); limits not met -> SKIPPED

The cycle only talks to capability protocols (shell, power, console) and to kernel/
knowledge; it never knows whether the host is a rack server or a virtual lab machine.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from orchestrator.config.model import Host
from orchestrator.config.playbook import Case, Expectation
from orchestrator.errors import FatalInfraError, InfraError, OrchestratorError, RetryableInfraError
from orchestrator.hostwait import BootFacts, read_boot_facts, wait_for_boot
from orchestrator.kernel import signatures as sig
from orchestrator.kernel.injectors import injector as make_injector
from orchestrator.kernel.kdump import KdumpLayout
from orchestrator.kernel.pages import Target, explicit_target, select_target
from orchestrator.kernel.sysctl import read_sysctls, write_sysctls
from orchestrator.recovery import recover_wedged_host
from orchestrator.case_result import build_case_result
from orchestrator.results.model import ERROR, FAIL, PASS, SKIP, CaseResult, Evidence, PhaseTiming
from orchestrator.transport.base import ConsoleProtocol, PowerProtocol, ShellProtocol
from orchestrator.verify import CLOCK_SLACK_S, Observation, judge_panic, judge_survive
from orchestrator.waitmeter import WaitMeter


class State(enum.Enum):
    PREFLIGHT = "preflight"
    ARMED = "armed"
    TARGETED = "targeted"
    INJECTED = "injected"
    PANICKED = "panicked"
    SURVIVED = "survived"
    WEDGED = "wedged"
    DUMPED = "dumped"          # host back up after kdump (new boot_id)
    COLLECTED = "collected"
    VERIFIED = "verified"
    RESTORED = "restored"
    INFRA_ERROR = "infra-error"
    SKIPPED = "skipped"


@dataclass
class HostHandles:
    """The capabilities of one host, as built by the runner from the inventory."""

    host: Host
    shell: ShellProtocol
    poll_shell: ShellProtocol            # short connect timeout: used while the host reboots
    power: PowerProtocol | None
    console: ConsoleProtocol | None
    kdump: KdumpLayout
    pause: Callable[[float], None] = time.sleep   # between polls of the host


@dataclass
class CaseContext:
    """What the cycle learns as it goes; becomes the CaseResult."""

    started: float = field(default_factory=time.monotonic)
    state: State = State.PREFLIGHT
    timings: list = field(default_factory=list)
    evidence: list = field(default_factory=list)
    recovery: list = field(default_factory=list)
    before: BootFacts | None = None
    after: BootFacts | None = None
    old_sysctls: dict = field(default_factory=dict)
    target: Target | None = None
    expect: Expectation | None = None
    console_mark: int = 0
    inject_t: float | None = None
    inject_epoch: float | None = None
    panic_line: sig.KernelEvent | None = None
    panic_t: float | None = None
    panic_noticed_t: float | None = None
    dumps_before: tuple = ()
    dump: object | None = None
    skip_reason: str | None = None


class CaseCycle:
    def __init__(self, handles: HostHandles, case: Case, *, expect_resolver: Callable | None = None,
                 on_state: Callable[[str, str], None] | None = None):
        self.meter = WaitMeter()
        # The cycle sees metered transports, so each phase knows how long it waited on the host.
        self.h = HostHandles(host=handles.host, shell=self.meter.wrap(handles.shell),
                             poll_shell=self.meter.wrap(handles.poll_shell), power=self.meter.wrap(handles.power),
                             console=self.meter.wrap(handles.console), kdump=handles.kdump,
                             pause=self.meter.sleep)
        self.case = case
        self.resolve_expect = expect_resolver or (lambda case, shell: case.expect)
        self.on_state = on_state or (lambda host, state: None)
        self.ctx = CaseContext()

    # -- bookkeeping ---------------------------------------------------------------------
    def _begin(self) -> tuple[float, float]:
        """Start a phase: (monotonic start, time waited on the host so far)."""
        return time.monotonic(), self.meter.total

    def _enter(self, state: State, begun: tuple[float, float], note: str = "") -> None:
        now, (started, waited0) = time.monotonic(), begun
        waited = min(self.meter.total - waited0, now - started)
        self.ctx.timings.append(PhaseTiming(state=state.value, started=round(started - self.ctx.started, 3),
                                            seconds=round(now - started, 3), waited=round(waited, 3), note=note))
        self.ctx.state = state
        self.on_state(self.h.host.name, state.value)

    def _deadline(self, name: str) -> float:
        return float(self.case.deadlines[name])

    def _evidence(self, source: str, text: str, t: float | None = None) -> None:
        since = None if t is None or self.ctx.inject_t is None else round(t - self.ctx.inject_t, 3)
        self.ctx.evidence.append(Evidence(source=source, text=text, t=since))

    # -- the machine ---------------------------------------------------------------------
    def run(self) -> CaseResult:
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            reasons = self._drive()
            verdict = SKIP if self.ctx.skip_reason else (FAIL if reasons else PASS)
            reasons = [self.ctx.skip_reason] if self.ctx.skip_reason else reasons
        except InfraError as exc:
            verdict, reasons = ERROR, [f"{self.ctx.state.value}: {exc}"]
            self._enter(State.INFRA_ERROR, self._begin(), str(exc))
        except OrchestratorError as exc:
            verdict, reasons = ERROR, [f"{self.ctx.state.value}: {exc}"]
        finally:
            self._restore_quietly()
        return self._result(verdict, reasons, started_at)

    def _drive(self) -> list[str]:
        if not self._preflight():
            return []
        self._arm()
        self._pick_target()
        self._inject()
        if self.ctx.expect.outcome == "panic" or self._panicked_anyway():
            return self._after_panic()
        return self._after_survive()

    def _preflight(self) -> bool:
        t0 = self._begin()
        host, case = self.h.host, self.case
        if not host.destructive:
            raise FatalInfraError(f"host {host.name} is not marked destructive: true; refusing to inject")
        if self.h.power is not None and self.h.power.status() != "on":
            self.ctx.recovery.append("preflight: BMC reported power off; powered on")
            self.h.power.on()
        facts = wait_for_boot(self.h.poll_shell, deadline_s=self._deadline("preflight"), state="preflight",
                              kdump_loaded=case.kdump == "required" and case.expect.outcome != "survive",
                              sleep=self.h.pause)
        self.ctx.before = facts
        present = read_sysctls(self.h.shell, case.limits.sysctls_present)
        missing = [name for name, value in present.items() if value is None]
        if missing:
            self.ctx.skip_reason = f"kernel {facts.kernel_release} lacks sysctl {', '.join(missing)}"
        inj = make_injector(case.injector)
        why = inj.unavailable_reason(self.h.shell, arch=host.arch)
        if why and not self.ctx.skip_reason:
            raise FatalInfraError(f"injector {case.injector} unusable on {host.name}: {why}")
        if not self.ctx.skip_reason:
            self.ctx.expect = self.resolve_expect(case, self.h.shell)
            self.ctx.dumps_before = tuple(self.h.kdump.list_dumps(self.h.shell))
        self._enter(State.PREFLIGHT, t0, facts.kernel_release)
        return self.ctx.skip_reason is None

    def _arm(self) -> None:
        t0 = self._begin()
        wanted = dict(self.case.sysctls)
        self.ctx.old_sysctls = {k: v for k, v in read_sysctls(self.h.shell, wanted).items() if v is not None}
        write_sysctls(self.h.shell, wanted)
        if self.case.kdump == "unload":
            self.h.shell.run("kexec -p -u", timeout=30)
        self._enter(State.ARMED, t0, " ".join(f"{k}={v}" for k, v in wanted.items()))

    def _pick_target(self) -> None:
        t0 = self._begin()
        arch = self.h.host.arch
        if self.case.target == "pfn":
            target = explicit_target(self.h.shell, self.case.pfn)
        else:
            target = select_target(self.h.shell, self.case.target, arch=arch, timeout=self._deadline("target"))
        self.ctx.target = target
        self._evidence("target", f"{target.page_class} pfn {target.pfn:#x} kpageflags {target.kpageflags:#x}: {target.how}")
        self._enter(State.TARGETED, t0, f"pfn {target.pfn:#x}")

    def _inject(self) -> None:
        t0 = self._begin()
        inj = make_injector(self.case.injector)
        inj.prepare(self.h.shell)
        epoch = int(self.h.shell.run("date +%s", timeout=15).stdout.strip() or 0)
        if self.h.console is not None:
            self.ctx.console_mark = self.h.console.mark()
        command = f"( {inj.command(self.ctx.target)} ) >/tmp/orch-inject.out 2>&1; echo $? >/tmp/orch-inject.rc"
        self.ctx.inject_t, self.ctx.inject_epoch = time.monotonic(), epoch
        # Fired detached: a panic must not leave this SSH call hanging on a dead kernel. A
        # connection that drops right now may be the panic itself: observe before judging.
        try:
            self.h.shell.fire_detached(command, timeout=self._deadline("inject"))
            note = self.case.injector
        except RetryableInfraError as exc:
            note = f"{self.case.injector}; SSH dropped while firing: {exc}"
            self._evidence("ssh", f"connection dropped during the injection: {exc}")
        self._enter(State.INJECTED, t0, note)

    def _watch_for_panic(self, timeout: float) -> bool:
        console = self.h.console
        if console is None or not console.healthy():
            return False
        line = console.wait_for(sig.PANIC_LINE, since=self.ctx.console_mark, timeout=timeout)
        if line is None:
            return False
        self.ctx.panic_noticed_t = time.monotonic()
        self.ctx.panic_t = line.t
        self.ctx.panic_line = sig.parse_line(line.text)
        self._evidence("console", line.text, line.t)
        return True

    def _panicked_anyway(self) -> bool:
        """A survive case watches the console for a panic that must not come."""
        t0 = self._begin()
        panicked = self._watch_for_panic(self._deadline("survive"))
        if panicked:
            self._enter(State.PANICKED, t0, "unexpected panic")
        return panicked

    def _after_panic(self) -> list[str]:
        if self.ctx.state is not State.PANICKED:
            t0 = self._begin()
            seen = self._watch_for_panic(self._deadline("panic"))
            self._enter(State.PANICKED, t0, "seen on console" if seen else "not seen on console")
            if not seen and self._still_same_boot():
                # No panic line and the same kernel still answers: it did not panic.
                return self._after_survive_check(panic=True)
        self._await_reboot()
        self._collect()
        return self._verify(panic=True)

    def _await_reboot(self) -> None:
        t0 = self._begin()
        try:
            self.ctx.after = wait_for_boot(self.h.poll_shell, deadline_s=self._deadline("dump"), state="dump",
                                           not_boot_id=self.ctx.before.boot_id, sleep=self.h.pause)
            self.h.shell.close()   # its connection belonged to the previous boot
            self._enter(State.DUMPED, t0, "back on SSH with a new boot_id")
        except InfraError as exc:
            self._enter(State.WEDGED, t0, str(exc))
            t1 = self._begin()
            self.ctx.after = recover_wedged_host(self.h, self.ctx.before.boot_id, self._deadline("wedge"),
                                                 self.ctx.recovery, nmi_grace_s=self._deadline("nmi"))
            self.h.shell.close()
            self._enter(State.DUMPED, t1, "; ".join(self.ctx.recovery))

    def _collect(self) -> None:
        t0 = self._begin()
        kdump, shell = self.h.kdump, self.h.shell
        listed = _retry_transient(kdump.list_dumps, shell)
        rewritten = _retry_transient(kdump.written_since, shell, self.ctx.inject_epoch - CLOCK_SLACK_S)
        new = sorted({d for d in listed if d not in self.ctx.dumps_before} | set(rewritten))
        if new:
            # Only a dump made after the injection counts; with several, the newest.
            self.ctx.dump = _retry_transient(kdump.collect, shell, new[-1])
            if len(new) > 1:
                self._evidence("dump", f"{len(new)} new dumps: {', '.join(sorted(new))}; using the newest")
        self._enter(State.COLLECTED, t0, self.ctx.dump.dump_id if self.ctx.dump else "no new dump")

    def _still_same_boot(self) -> bool:
        try:
            return read_boot_facts(self.h.poll_shell, timeout=10).boot_id == self.ctx.before.boot_id
        except InfraError:
            return False

    def _after_survive(self) -> list[str]:
        return self._after_survive_check(panic=False)

    def _after_survive_check(self, *, panic: bool) -> list[str]:
        t0 = self._begin()
        facts = None
        try:
            facts = read_boot_facts(self.h.shell, timeout=self._deadline("collect"))
        except InfraError:
            pass
        self.ctx.after = facts
        live = None
        if facts is not None:
            live = self.h.shell.run("dmesg", timeout=self._deadline("collect"), check=False).stdout
            rc = self.h.shell.run("cat /tmp/orch-inject.rc /tmp/orch-inject.out", timeout=15, check=False).stdout
            self._evidence("inject", "exit status and output: " + " ".join(rc.split()))
        self._enter(State.SURVIVED, t0)
        return self._verify(panic=panic, live_dmesg=live)

    def _verify(self, *, panic: bool, live_dmesg: str | None = None) -> list[str]:
        t0 = self._begin()
        console = tuple(line.text for line in self.h.console.lines(self.ctx.console_mark)) if self.h.console else ()
        for text in console:
            if sig.MF_LINE.search(text) or sig.PANIC_LINE.search(text):
                self._evidence("console", text)
        dump = self.ctx.dump
        if dump is not None and dump.dmesg:
            for text in dump.dmesg.splitlines():
                if self.ctx.target and (f"{self.ctx.target.pfn:#x}" in text or sig.PANIC_LINE.search(text)):
                    self._evidence("dump-dmesg", text.strip())
        has_console = self.h.console is not None
        if has_console and not self.h.console.healthy() and "sol" in self.h.host.features:
            raise FatalInfraError("the SOL console died during the case")
        rebooted = self.ctx.after is not None and self.ctx.after.boot_id != self.ctx.before.boot_id
        obs = Observation(pfn=self.ctx.target.pfn, console=console, dump_dmesg=dump.dmesg if dump else None,
                          live_dmesg=live_dmesg, vmcoreinfo=dict(dump.vmcoreinfo) if dump else {},
                          inject_epoch=self.ctx.inject_epoch, dump_incomplete=bool(dump and dump.incomplete),
                          rebooted=rebooted, console_expected=has_console)
        reasons = judge_panic(obs, self.ctx.expect) if panic and self.ctx.expect.outcome == "panic" else \
            judge_survive(obs, self.ctx.expect)
        self._enter(State.VERIFIED, t0, "ok" if not reasons else f"{len(reasons)} problem(s)")
        return reasons

    def _restore_quietly(self) -> None:
        """Put the sysctls back as recorded and clean up the target. Best effort: the
        verdict is already decided, and a rebooted host has its defaults back anyway."""
        if not self.ctx.old_sysctls and not (self.ctx.target and self.ctx.target.cleanup):
            return
        t0 = self._begin()
        try:
            current = read_sysctls(self.h.shell, self.ctx.old_sysctls)
            changed = {k: v for k, v in self.ctx.old_sysctls.items() if current.get(k) != v}
            if changed:
                write_sysctls(self.h.shell, changed)
            if self.ctx.target and self.ctx.target.cleanup:
                self.h.shell.run(self.ctx.target.cleanup, timeout=15, check=False)
            self._enter(State.RESTORED, t0)
        except OrchestratorError as exc:
            self.ctx.recovery.append(f"restore failed: {exc}")

    def _result(self, verdict: str, reasons: list[str], started_at: str) -> CaseResult:
        return build_case_result(self.h.host.name, self.case, self.ctx, verdict, reasons, started_at)


def _retry_transient(call, *args):
    """A freshly rebooted host may drop the first connection or two: retry those only."""
    for attempt in Retrying(stop=stop_after_attempt(3), wait=wait_fixed(1.0),
                            retry=retry_if_exception_type(RetryableInfraError), reraise=True):
        with attempt:
            return call(*args)
