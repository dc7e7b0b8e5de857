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


from orchestrator.config.model import Host
from orchestrator.config.playbook import Case, Expectation
from orchestrator.errors import FatalInfraError, InfraError, OrchestratorError, RetryableInfraError
from orchestrator.cycle.hostwait import BootFacts, wait_for_boot
from orchestrator.kernel import signatures as sig
from orchestrator.kernel.facts import probe_facts
from orchestrator.kernel.injectors import injector as make_injector
from orchestrator.kernel.kdump import KdumpLayout
from orchestrator.kernel.pages import Target, explicit_target, select_target
from orchestrator.kernel.sysctl import read_sysctls, write_sysctls
from orchestrator.cycle.observe import INJECT_OUTPUT, AfterInjection
from orchestrator.cycle.outcome import build_case_result
from orchestrator.results.model import ERROR, FAIL, PASS, SKIP, CaseResult, Evidence, PhaseTiming
from orchestrator.protocols.console import ConsoleProtocol
from orchestrator.protocols.power import PowerProtocol
from orchestrator.protocols.shell import ShellProtocol, detached_files
from orchestrator.cycle.waitmeter import WaitMeter


#: Distributions reload their crash kernel differently; the lab guests answer to kdump-config.
RELOAD_KDUMP = "kdump-config load || kdumpctl restart || systemctl restart kdump"


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
    kdump_unloaded: bool = False
    page_size: int = 4096
    console_gap: bool = False            # the console was down while the panic could come


class CaseCycle(AfterInjection):
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
            if self.ctx.panic_line is not None and self.ctx.expect and self.ctx.expect.outcome == "survive":
                # The kernel failure was already seen; the lab's trouble afterwards does not undo it.
                verdict, reasons = FAIL, [f"console: the kernel panicked: {self.ctx.panic_line.text}", f"then: {exc}"]
            self._enter(State.INFRA_ERROR, self._begin(), str(exc))
        except OrchestratorError as exc:
            verdict, reasons = ERROR, [f"{self.ctx.state.value}: {exc}"]
        except Exception as exc:  # noqa: BLE001 - one case's bug must not end the whole run
            verdict, reasons = ERROR, [f"{self.ctx.state.value}: internal error: {type(exc).__name__}: {exc}"]
        finally:
            self._restore_quietly()
        return self._result(verdict, reasons, started_at)

    def _drive(self) -> list[str]:
        if not self._preflight():
            return []
        self._arm()
        self._pick_target()
        self._inject()
        if self._observe() == "returned":
            return self._judge_alive()      # the injection returned and the kernel kept running
        return self._after_panic()          # a panic was seen, or the host stopped answering

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
        kernel = probe_facts(self.h.shell)      # page size: 4K, 16K or 64K arm64 kernels differ
        if kernel.arch != host.arch:
            raise FatalInfraError(f"the inventory says {host.name} is {host.arch}, the host says {kernel.arch}")
        self.ctx.page_size = kernel.page_size
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
            self.ctx.kdump_unloaded = True
        self._enter(State.ARMED, t0, " ".join(f"{k}={v}" for k, v in wanted.items()))

    def _pick_target(self) -> None:
        t0 = self._begin()
        arch = self.h.host.arch
        if self.case.target == "pfn":
            target = explicit_target(self.h.shell, self.case.pfn, page_size=self.ctx.page_size)
        else:
            target = select_target(self.h.shell, self.case.target, arch=arch, page_size=self.ctx.page_size,
                                   timeout=self._deadline("target"))
        self.ctx.target = target
        self._evidence("target", f"{target.page_class} pfn {target.pfn:#x} kpageflags {target.kpageflags:#x}: {target.how}")
        self._enter(State.TARGETED, t0, f"pfn {target.pfn:#x}")

    def _inject(self) -> None:
        t0 = self._begin()
        inj = make_injector(self.case.injector)
        inj.prepare(self.h.shell)
        # A previous case's exit status must not pass for this injection's, even if the
        # launch below drops before its own clean-up ran.
        stale = " ".join(detached_files(INJECT_OUTPUT).values())
        epoch = self.h.shell.run(f"rm -f {stale}; date +%s", timeout=15).stdout.strip()
        if not epoch.isdigit():
            raise RetryableInfraError(f"the host's clock answered {epoch!r}, not seconds since the epoch")
        epoch = int(epoch)
        if self.h.console is not None:
            self.ctx.console_mark = self.h.console.mark()
        command = inj.command(self.ctx.target)
        self.ctx.inject_t, self.ctx.inject_epoch = time.monotonic(), epoch
        # Fired detached: a panic must not leave this SSH call hanging on a dead kernel. A
        # connection that drops right now may be the panic itself: observe before judging.
        try:
            self.h.shell.fire_detached(command, timeout=self._deadline("inject"), output=INJECT_OUTPUT)
            note = self.case.injector
        except RetryableInfraError as exc:
            note = f"{self.case.injector}; SSH dropped while firing: {exc}"
            self._evidence("ssh", f"connection dropped during the injection: {exc}")
        self._enter(State.INJECTED, t0, note)

    def _restore_quietly(self) -> None:
        """Put the sysctls back as recorded and clean up the target. Best effort: the
        verdict is already decided, and a rebooted host has its defaults back anyway."""
        if not self.ctx.old_sysctls and not (self.ctx.target and self.ctx.target.cleanup) \
                and not self.ctx.kdump_unloaded:
            return
        t0 = self._begin()
        try:
            if self.ctx.kdump_unloaded and (self.ctx.after is None or self.ctx.after.boot_id == self.ctx.before.boot_id):
                # Same boot: the crash kernel is still unloaded; a reboot would have reloaded it.
                self.h.shell.run(RELOAD_KDUMP, timeout=60, check=False)
                self.ctx.recovery.append("restore: reloaded the crash kernel")
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

