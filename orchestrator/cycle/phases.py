"""The phases that change the host before the injection, and the one that puts it back:
preflight, arm, target, inject, restore. Each takes the values it needs and returns the
next frozen value (cycle/steps.py); cycle/machine.py strings them together.
"""

from __future__ import annotations

import time
from typing import Callable

from orchestrator.config.playbook import Case
from orchestrator.cycle.bounded import BoundedShell
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import BootFacts, wait_for_boot
from orchestrator.cycle.record import CaseRecord
from orchestrator.cycle.steps import Armed, Injected, Preflight, Targeted
from orchestrator.errors import FatalInfraError, OrchestratorError, RetryableInfraError
from orchestrator.kernel.facts import probe_facts
from orchestrator.kernel.injectors import injector as make_injector
from orchestrator.kernel.pages import explicit_target, select_target
from orchestrator.kernel.sysctl import read_sysctls, write_sysctls
from orchestrator.protocols.shell import detached_files
from orchestrator.tunables import KDUMP_RELOAD_TIMEOUT_S

#: where the detached injection's .rc/.out/.err land (ShellProtocol.fire_detached)
INJECT_OUTPUT = "/tmp/orch-inject"
#: Distributions reload their crash kernel differently; the lab guests answer to kdump-config.
RELOAD_KDUMP = "kdump-config load || kdumpctl restart || systemctl restart kdump"


def preflight(h: HostHandles, case: Case, resolve_expect: Callable, deadline_s: float,
              record: CaseRecord) -> Preflight:
    """The host is up (and its crash kernel loaded when the case needs one), is what the
    inventory says, and has what the case needs; else the case is skipped or an error."""
    host = h.host
    if not host.destructive:
        raise FatalInfraError(f"host {host.name} is not marked destructive: true; refusing to inject")
    if h.power is not None and h.power.status() != "on":
        record.note_recovery("preflight: BMC reported power off; powered on")
        h.power.on()
    facts = wait_for_boot(h.poll_shell, deadline_s=deadline_s, state="preflight",
                          kdump_loaded=case.kdump == "required" and case.expect.outcome != "survive",
                          sleep=h.pause)
    kernel = probe_facts(h.shell)      # page size: 4K, 16K or 64K arm64 kernels differ
    if kernel.arch != host.arch:
        raise FatalInfraError(f"the inventory says {host.name} is {host.arch}, the host says {kernel.arch}")
    present = read_sysctls(h.shell, case.limits.sysctls_present)
    missing = [name for name, value in present.items() if value is None]
    skip = f"kernel {facts.kernel_release} lacks sysctl {', '.join(missing)}" if missing else None
    why = make_injector(case.injector).unavailable_reason(h.shell, arch=host.arch)
    if why and not skip:
        raise FatalInfraError(f"injector {case.injector} unusable on {host.name}: {why}")
    if skip:
        return Preflight(before=facts, page_size=kernel.page_size, expect=None, dumps_before=(), skip_reason=skip)
    return Preflight(before=facts, page_size=kernel.page_size, expect=resolve_expect(case, h.shell),
                     dumps_before=tuple(h.kdump.list_dumps(h.shell)))


def arm(h: HostHandles, case: Case, deadline_s: float) -> Armed:
    """Set the case's sysctls (recording the old values) and unload the crash kernel if asked."""
    shell = BoundedShell(h.shell, deadline_s, "arm")
    wanted = dict(case.sysctls)
    old = {k: v for k, v in read_sysctls(shell, wanted).items() if v is not None}
    write_sysctls(shell, wanted)
    if case.kdump == "unload":
        shell.run("kexec -p -u", timeout=deadline_s)
    return Armed.of(old, kdump_unloaded=case.kdump == "unload")


def pick_target(h: HostHandles, case: Case, page_size: int, deadline_s: float, record: CaseRecord) -> Targeted:
    if case.target == "pfn":
        target = explicit_target(h.shell, case.pfn, page_size=page_size)
    else:
        target = select_target(h.shell, case.target, arch=h.host.arch, page_size=page_size, timeout=deadline_s)
    record.add_evidence("target", f"{target.page_class} pfn {target.pfn:#x} kpageflags {target.kpageflags:#x}: "
                                  f"{target.how}")
    return Targeted(target)


def inject(h: HostHandles, case: Case, targeted: Targeted, deadline_s: float,
           record: CaseRecord) -> tuple[Injected, str]:
    """Fire the injection detached; returns it and the timing note."""
    inj = make_injector(case.injector)
    inj.prepare(h.shell)
    # A previous case's exit status must not pass for this injection's, even if the
    # launch below drops before its own clean-up ran.
    stale = " ".join(detached_files(INJECT_OUTPUT).values())
    epoch = h.shell.run(f"rm -f {stale}; date +%s", timeout=15).stdout.strip()
    if not epoch.isdigit():
        raise RetryableInfraError(f"the host's clock answered {epoch!r}, not seconds since the epoch")
    mark = h.console.mark() if h.console is not None else 0
    command = inj.command(targeted.target)
    injected = Injected(epoch=int(epoch), t=time.monotonic(), console_mark=mark)
    # Fired detached: a panic must not leave this SSH call hanging on a dead kernel. A
    # connection that drops right now may be the panic itself: observe before judging.
    try:
        h.shell.fire_detached(command, timeout=deadline_s, output=INJECT_OUTPUT)
        return injected, case.injector
    except RetryableInfraError as exc:
        record.add_evidence("ssh", f"connection dropped during the injection: {exc}")
        return injected, f"{case.injector}; SSH dropped while firing: {exc}"


def restore(h: HostHandles, armed: Armed | None, targeted: Targeted | None, before: BootFacts | None,
            after: BootFacts | None, deadline_s: float, record: CaseRecord) -> bool:
    """Put the sysctls back as recorded and clean up the target; False when there was nothing
    to do. Best effort: the verdict is already decided, and a rebooted host has its defaults
    back anyway."""
    cleanup = targeted.target.cleanup if targeted else None
    if armed is None and not cleanup:
        return False
    old = dict(armed.old_sysctls) if armed else {}
    unloaded = armed is not None and armed.kdump_unloaded
    if not old and not cleanup and not unloaded:
        return False
    shell = BoundedShell(h.shell, deadline_s, "restore")
    try:
        if unloaded and (after is None or after.boot_id == before.boot_id):
            # Same boot: the crash kernel is still unloaded; a reboot would have reloaded it.
            # Not held to the restore deadline: a reload cut short leaves the next case
            # waiting in preflight for a crash kernel that never comes.
            h.shell.run(RELOAD_KDUMP, timeout=KDUMP_RELOAD_TIMEOUT_S, check=False)
            record.note_recovery("restore: reloaded the crash kernel")
        current = read_sysctls(shell, old)
        changed = {k: v for k, v in old.items() if current.get(k) != v}
        if changed:
            write_sysctls(shell, changed)
        if cleanup:
            shell.run(cleanup, timeout=15, check=False)
        return True
    except OrchestratorError as exc:
        record.note_recovery(f"restore failed: {exc}")
        return False
