"""The phases that change the host before the injection, and the one that puts it back:
preflight, arm, target, inject, restore. Each takes the values it needs and returns the
next frozen value (cycle/steps.py); cycle/machine.py strings them together.
"""

from __future__ import annotations

import shlex
import time
from typing import Callable

from orchestrator.config.playbook import Case
from orchestrator.cycle import ahead, arm_journal
from orchestrator.cycle.bounded import BoundedShell
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import BootFacts, read_boot_facts, retry_until, wait_for_boot
from orchestrator.cycle.record import CaseRecord
from orchestrator.cycle.steps import Armed, Injected, Preflight, Targeted
from orchestrator.errors import LAB, FatalInfraError, OrchestratorError, RetryableInfraError, UnsupportedOperation
from orchestrator.kernel.facts import probe_facts
from orchestrator.kernel.injectors import FirmwareInjector, injector as make_injector
from orchestrator.kernel.pages import explicit_target, select_target
from orchestrator.kernel.sysctl import read_sysctls, write_sysctls
from orchestrator.results.store import safe_name
from orchestrator.protocols.shell import detached_files
from orchestrator.protocols.shell_batch import Section
from orchestrator.tunables import KDUMP_RELOAD_TIMEOUT_S, SETTLE_S, SETTLE_SYNC_S

#: Where a case's detached injection leaves its .rc/.out/.err (ShellProtocol.fire_detached):
#: per run and per case, so two runs on one host can never read each other's outcome.
INJECT_OUTPUT_ROOT = "/tmp/memfail-orchestrator"


def inject_output(run_id: str, case: str) -> str:
    return f"{INJECT_OUTPUT_ROOT}/{safe_name(run_id)}/{safe_name(case)}/inject"


def preflight(h: HostHandles, case: Case, resolve_expect: Callable, deadline_s: float,
              record: CaseRecord) -> Preflight:
    """The host is up (and its crash kernel loaded when the case needs one), is what the
    inventory says, and has what the case needs; else the case is skipped or an error.

    Preflight changes nothing on the host (putting back a host left armed is idempotent),
    so a transient failure (a banner that came late, a dropped connection, a BMC that
    did not answer in time) is retried on a fresh connection until the preflight deadline:
    one slow sshd banner must not cost the case (seen: "verdict error in 1.3 s ...
    Error reading SSH protocol banner")."""
    if not h.host.destructive:
        raise FatalInfraError(f"host {h.host.name} is not marked destructive: true; refusing to inject")
    def again(exc: Exception) -> None:
        record.note_recovery(f"preflight: retried after a transient failure: {exc}")
        h.shell.close()

    return retry_until(deadline_s, lambda left: _preflight_once(h, case, resolve_expect, left, record),
                       sleep=h.pause, on_retry=again)


def _preflight_once(h: HostHandles, case: Case, resolve_expect: Callable, deadline_s: float,
                    record: CaseRecord) -> Preflight:
    host, kdump = h.host, case.kdump == "required" and case.expect.outcome != "survive"
    ahead.preflight(h, case, make_injector(case.injector))
    facts = _answering(h)
    # A host that answers SSH is powered on: the BMC is asked only when it does not (a slow
    # BMC, whose replies come 2 s late, never completes pyghmi's login and must not cost a
    # case that needs no power action).
    if facts is None and h.power is not None and h.power.status() != "on":
        record.note_recovery("preflight: BMC reported power off; powered on")
        h.power.on()
    if facts is None or (kdump and not facts.kdump_loaded):
        facts = wait_for_boot(h.poll_shell, deadline_s=deadline_s, state="preflight", kdump_loaded=kdump,
                              sleep=h.pause)
    # page size: 4K, 16K or 64K arm64 kernels differ; neither it nor the arch changes in a boot
    kernel = h.per_boot.get(facts.boot_id, "kernel", lambda: probe_facts(h.shell))
    if kernel.arch != host.arch:
        raise FatalInfraError(f"the inventory says {host.name} is {host.arch}, the host says {kernel.arch}")
    _restore_left_armed(h, facts, record)
    present = read_sysctls(h.shell, case.limits.sysctls_present)
    missing = [name for name, value in present.items() if value is None]
    skip = f"kernel {facts.kernel_release} lacks sysctl {', '.join(missing)}" if missing else None
    why = h.per_boot.get(facts.boot_id, ("injector", case.injector),
                         lambda: make_injector(case.injector).unavailable_reason(h.shell, arch=host.arch))
    if why and not skip:
        # the injector may know whom to blame (kernel/einj.py: a firmware without EINJ)
        raise FatalInfraError(f"injector {case.injector} unusable on {host.name}: {why}",
                              blame=getattr(why, "blame", LAB))
    if skip:
        return Preflight(before=facts, page_size=kernel.page_size, expect=None, dumps_before=(), skip_reason=skip)
    expect = resolve_expect(case, h.shell, per_boot=h.per_boot, boot_id=facts.boot_id, record=record)
    return Preflight(before=facts, page_size=kernel.page_size, expect=expect,
                     dumps_before=tuple(h.kdump.list_dumps(h.shell)))


def _answering(h: HostHandles) -> BootFacts | None:
    """The host's boot now, from one command on the connection the last case left open (a
    new SSH handshake costs ~0.3 s on a lab guest); None when it does not answer there."""
    try:
        return read_boot_facts(h.shell)
    except RetryableInfraError:
        h.shell.close()
        return None


def _restore_left_armed(h: HostHandles, facts: BootFacts, record: CaseRecord) -> None:
    """A host whose journal says it is armed (a killed controller, a failed restore) is put
    back before anything else, and the case says so."""
    pending = arm_journal.read_record(h.shell, h.host.state_dir)
    if pending is None:
        return
    done = arm_journal.restore(h.shell, h.host.state_dir, pending, timeout=KDUMP_RELOAD_TIMEOUT_S,
                               boot_id=facts.boot_id)
    note = f"preflight: the host was left armed by {pending.describe()}; restored it"
    record.note_recovery(note + (f" ({'; '.join(done)})" if done else ""))
    record.add_evidence("journal", note)


def arm(h: HostHandles, case: Case, deadline_s: float, *, run_id: str, boot_id: str) -> Armed:
    """Record the originals on the host (once), then set the case's sysctls and unload the
    crash kernel if asked."""
    shell = BoundedShell(h.shell, deadline_s, "arm")
    wanted = dict(case.sysctls)
    journal = arm_journal.read_originals(shell, wanted, run_id=run_id, case=case.name, boot_id=boot_id)
    ahead.arm(shell, case, h.host.state_dir, journal)
    arm_journal.write_record(shell, h.host.state_dir, journal)
    write_sysctls(shell, wanted)
    if case.kdump == "unload":
        shell.run("kexec -p -u", timeout=deadline_s)
    return Armed(journal)


def pick_target(h: HostHandles, case: Case, page_size: int, deadline_s: float, record: CaseRecord) -> Targeted:
    if case.target == "pfn":
        target = explicit_target(h.shell, case.pfn, page_size=page_size)
    else:
        target = select_target(h.shell, case.target, arch=h.host.arch, page_size=page_size, timeout=deadline_s)
    record.add_evidence("target", f"{target.page_class} pfn {target.pfn:#x} kpageflags {target.kpageflags:#x}: "
                                  f"{target.how}")
    return Targeted(target)


def settle_time(case: Case) -> float:
    """How long a host that kept running may still panic after the injection returned."""
    return SETTLE_S if make_injector(case.injector).reports_late else SETTLE_SYNC_S


def inject(h: HostHandles, case: Case, targeted: Targeted, deadline_s: float, record: CaseRecord, *,
           run_id: str) -> tuple[Injected, str]:
    """Fire the injection detached; returns it and the timing note."""
    inj = make_injector(case.injector)
    output = inject_output(run_id, case.name)
    # A previous attempt's exit status (a resumed run repeats a case) must not pass for
    # this injection's, even if the launch below drops before its own clean-up ran.
    stale = " ".join(detached_files(output).values())
    clear = f"mkdir -p {shlex.quote(output.rsplit('/', 1)[0])}; rm -f {stale}; date +%s"
    ahead.inject(h.shell, inj, clear)
    inj.prepare(h.shell)
    epoch = h.shell.run(clear, timeout=15).stdout.strip()
    if not epoch.isdigit():
        raise RetryableInfraError(f"the host's clock answered {epoch!r}, not seconds since the epoch")
    mark = h.console.mark() if h.console is not None else 0
    command = None if isinstance(inj, FirmwareInjector) else inj.command(targeted.target)
    injected = Injected(epoch=int(epoch), t=time.monotonic(), console_mark=mark, output=output)
    # Fired detached: a panic must not leave this SSH call hanging on a dead kernel. A
    # connection that drops right now may be the panic itself: observe before judging.
    try:
        if isinstance(inj, FirmwareInjector):
            _report_through_firmware(h, inj, targeted.target, output)
        else:
            h.shell.fire_detached(command, timeout=deadline_s, output=output)
        return injected, case.injector
    except RetryableInfraError as exc:
        record.add_evidence("ssh", f"connection dropped during the injection: {exc}")
        return injected, f"{case.injector}; SSH dropped while firing: {exc}"


def _report_through_firmware(h: HostHandles, inj: FirmwareInjector, target, output: str) -> None:
    """The BMC's firmware reports the error; the outcome files say it accepted the request,
    so that observing the host is the same as for an injection run on it. Written after the
    report, as a write on the host would end: a machine check panics the lab host within ms
    (the write then drops, measured), and a host that died without a console must look LOST
    (-> reboot, dump), not as if the report had returned and the host kept running."""
    if h.firmware is None:
        raise UnsupportedOperation(f"{inj.name}: the host has no BMC through which its firmware reports errors")
    h.firmware.report_memory_error(target.phys_addr, path=inj.path, severity=inj.severity)
    files = detached_files(output)
    h.shell.run(f"echo 'firmware accepted the {inj.severity} {inj.path} report' > {files['out']}; "
                f": > {files['err']}; echo 0 > {files['rc']}", timeout=15)


def restore_ahead(h: HostHandles, armed: Armed | None, boot_id: str | None) -> list[Section]:
    """The restore's commands when all goes well, for the step before it to send ahead with its
    own (cycle/ahead.py): a host back from its panic is then restored in no round trip of its own."""
    return arm_journal.restore_sections(h.host.state_dir, armed.record, boot_id) if armed is not None else []


def restore(h: HostHandles, armed: Armed | None, targeted: Targeted | None, after: BootFacts | None,
            deadline_s: float, record: CaseRecord) -> str | None:
    """Put the host back as its journal records and clean up the target; None when there
    was nothing to do, else what was done. ``LeftArmed`` when the host could not be put back:
    the journal then stays on the host for the next run's preflight or ``orchestrator disarm``."""
    cleanup = targeted.target.cleanup if targeted else None
    if armed is None and not cleanup:
        return None
    done = []
    if armed is not None:
        # Not held to the restore deadline: a crash-kernel reload cut short leaves the next
        # case waiting in preflight for a crash kernel that never comes.
        done = arm_journal.restore(h.shell, h.host.state_dir, armed.record, timeout=KDUMP_RELOAD_TIMEOUT_S,
                                   boot_id=after.boot_id if after else None)
        if "reloaded the crash kernel" in done:
            record.note_recovery("restore: reloaded the crash kernel")
    if cleanup:
        try:
            BoundedShell(h.shell, deadline_s, "restore").run(cleanup, timeout=15, check=False)
        except OrchestratorError as exc:          # the page's own clean-up: it never arms anything
            done.append(f"target clean-up failed: {exc}")
    return "; ".join(done)
