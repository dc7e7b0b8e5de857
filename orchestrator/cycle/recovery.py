"""Bringing a wedged host back through its BMC: first ask the kernel to crash, so kdump
still saves what it was doing (an NMI, or where the platform has none, a serial BREAK +
SysRq ``c`` over SOL), then a bounded number of power cycles. Every action taken is
appended to ``log`` as evidence.

Why the BREAK only when no NMI was delivered: arm64 servers without pseudo-NMI (Debian's
kernels, QEMU's virt board) refuse the diagnostic interrupt, and their BMC's SOL break +
``c`` is the crash request labs use there (arm64-ras-lab.md). After an NMI that was taken
and still brought nothing back, a SysRq key (handled in the UART's interrupt) would not
fare better: the power cycle comes next.
"""

from __future__ import annotations

import re
import time

from orchestrator.cycle.hostwait import BootFacts, wait_for_boot
from orchestrator.errors import DeadlineExceeded, FatalInfraError, InfraError, UnsupportedOperation
from orchestrator.tunables import MAX_POWER_CYCLES

SYSRQ_CRASH = "c"      # magic SysRq: "Trigger a crash" -> panic -> kdump
SYSRQ_PANIC = re.compile(r"sysrq triggered crash")


def recover_wedged_host(handles, old_boot_id: str, deadline_s: float, log: list[str], *,
                        nmi_grace_s: float = 45.0) -> BootFacts:
    """Return the new boot's facts, or raise ``FatalInfraError`` when the host stays dead.
    ``nmi_grace_s`` bounds the wait after the NMI or the BREAK."""
    if handles.power is None:
        raise FatalInfraError("host wedged and it has no BMC to recover it")
    end = time.monotonic() + deadline_s
    nmi_taken, after = _try_nmi(handles, old_boot_id, min(nmi_grace_s, _left(end)), log)
    if after is None and not nmi_taken:
        after = _try_sysrq_crash(handles, old_boot_id, min(nmi_grace_s, _left(end)), log)
    return after if after is not None else _power_cycles(handles, old_boot_id, end, log)


def _try_nmi(handles, old_boot_id: str, grace_s: float, log: list[str]) -> tuple[bool, BootFacts | None]:
    """(whether the BMC took the NMI, the new boot if one came within ``grace_s``)."""
    if "nmi" not in handles.host.features:
        return False, None
    try:
        handles.power.nmi()
    except UnsupportedOperation:
        log.append("wedged: the BMC does not support NMI")
        return False, None
    except InfraError as exc:
        log.append(f"wedged: the NMI failed ({exc})")
        return False, None
    log.append("wedged: NMI sent through the BMC")
    return True, _grace(handles, old_boot_id, grace_s, log, "the NMI")


def _try_sysrq_crash(handles, old_boot_id: str, grace_s: float, log: list[str]) -> BootFacts | None:
    """Serial BREAK + SysRq ``c`` over SOL; the new boot if one came within ``grace_s``."""
    console = handles.console
    if "sol_break" not in handles.host.features or console is None:
        return None
    since = console.mark()
    try:
        console.send_break(then=SYSRQ_CRASH)
    except (UnsupportedOperation, InfraError) as exc:
        log.append(f"wedged: no serial BREAK over SOL ({exc})")
        return None
    log.append(f"wedged: serial BREAK + SysRq {SYSRQ_CRASH} sent over SOL (no NMI)")
    after = _grace(handles, old_boot_id, grace_s, log, "the BREAK + SysRq")
    if any(SYSRQ_PANIC.search(line.text) for line in console.lines(since)):
        log.append("wedged: the console shows 'sysrq triggered crash'")
    return after


def _grace(handles, old_boot_id: str, grace_s: float, log: list[str], what: str) -> BootFacts | None:
    try:
        return wait_for_boot(handles.poll_shell, deadline_s=grace_s, state="wedge", not_boot_id=old_boot_id,
                             sleep=handles.pause)
    except DeadlineExceeded:
        log.append(f"wedged: no reboot within {grace_s:.0f} s of {what}")
    except InfraError as exc:
        log.append(f"wedged: {what} did not bring the host back ({exc}); power cycling")
    return None


def _power_cycles(handles, old_boot_id: str, end: float, log: list[str]) -> BootFacts:
    last: Exception | None = None
    done = 0
    for attempt in range(1, MAX_POWER_CYCLES + 1):
        if _left(end) <= 0:
            break
        # Each attempt gets its share of what is left, so a second cycle still has time.
        share = _left(end) / (MAX_POWER_CYCLES - attempt + 1)
        try:
            done += 1
            handles.power.cycle()
            log.append(f"wedged: power cycle {attempt} through the BMC")
            return wait_for_boot(handles.poll_shell, deadline_s=share, state="wedge", not_boot_id=old_boot_id,
                                 sleep=handles.pause)
        except InfraError as exc:
            last = exc
            log.append(f"wedged: power cycle {attempt} did not bring the host back: {exc}")
    raise FatalInfraError(f"host never came back after {done} power cycle(s): {last}")


def _left(end: float) -> float:
    return max(0.0, end - time.monotonic())
