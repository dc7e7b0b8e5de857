"""Bringing a wedged host back through its BMC: NMI first (it may still kdump), then a
bounded number of power cycles. Every action taken is appended to ``log`` as evidence."""

from __future__ import annotations

import time

from orchestrator.errors import DeadlineExceeded, FatalInfraError, InfraError
from orchestrator.cycle.hostwait import BootFacts, wait_for_boot
from orchestrator.errors import UnsupportedOperation
from orchestrator.tunables import MAX_POWER_CYCLES



def recover_wedged_host(handles, old_boot_id: str, deadline_s: float, log: list[str], *,
                        nmi_grace_s: float = 45.0) -> BootFacts:
    """Return the new boot's facts, or raise ``FatalInfraError`` when the host stays dead."""
    power = handles.power
    if power is None:
        raise FatalInfraError("host wedged and it has no BMC to recover it")
    end = time.monotonic() + deadline_s
    if "nmi" in handles.host.features:
        try:
            power.nmi()
            log.append("wedged: NMI sent through the BMC")
            return wait_for_boot(handles.poll_shell, deadline_s=min(nmi_grace_s, _left(end)), state="wedge",
                                 not_boot_id=old_boot_id, sleep=handles.pause)
        except UnsupportedOperation:
            log.append("wedged: the BMC does not support NMI")
        except DeadlineExceeded:
            log.append(f"wedged: no reboot within {nmi_grace_s:.0f} s of the NMI")
        except InfraError as exc:
            log.append(f"wedged: the NMI failed ({exc}); power cycling")
    last: Exception | None = None
    done = 0
    for attempt in range(1, MAX_POWER_CYCLES + 1):
        if _left(end) <= 0:
            break
        # Each attempt gets its share of what is left, so a second cycle still has time.
        share = _left(end) / (MAX_POWER_CYCLES - attempt + 1)
        try:
            done += 1
            power.cycle()
            log.append(f"wedged: power cycle {attempt} through the BMC")
            return wait_for_boot(handles.poll_shell, deadline_s=share, state="wedge", not_boot_id=old_boot_id,
                                 sleep=handles.pause)
        except InfraError as exc:
            last = exc
            log.append(f"wedged: power cycle {attempt} did not bring the host back: {exc}")
    raise FatalInfraError(f"host never came back after {done} power cycle(s): {last}")


def _left(end: float) -> float:
    return max(0.0, end - time.monotonic())
