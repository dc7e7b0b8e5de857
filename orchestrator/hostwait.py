"""Waiting on a host: SSH back, a new boot, kdump armed. Retries and deadlines via tenacity.

Liveness is always a real SSH command, never a TCP connect: QEMU's user network (and some
BMC-side NAT) accepts TCP for a dead guest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from orchestrator.errors import DeadlineExceeded, RetryableInfraError
from orchestrator.transport.base import ShellProtocol

#: Poll period while waiting for SSH: bounds "reboot noticed after sshd accepts" (target <= 1 s).
SSH_POLL_S = 0.25
#: The probe is three cats and a date: a host that needs longer is not up yet.
PROBE_TIMEOUT_S = 5.0

BOOT_FACTS_CMD = (
    "cat /proc/sys/kernel/random/boot_id; uname -r; "
    "cat /sys/kernel/kexec_crash_loaded 2>/dev/null || echo -; date +%s"
)


@dataclass(frozen=True)
class BootFacts:
    boot_id: str
    kernel_release: str
    kdump_loaded: bool | None       # None: the kernel has no kexec_crash_loaded file
    epoch: int                      # host clock, seconds
    seen_at: float                  # controller monotonic time of the answer


def read_boot_facts(shell: ShellProtocol, timeout: float = 15.0) -> BootFacts:
    out = shell.run(BOOT_FACTS_CMD, timeout=timeout).stdout.split()
    if len(out) < 4:
        raise RetryableInfraError(f"unexpected answer to the boot facts probe: {out!r}")
    loaded = None if out[2] == "-" else out[2] == "1"
    return BootFacts(boot_id=out[0], kernel_release=out[1], kdump_loaded=loaded, epoch=int(out[3]),
                     seen_at=time.monotonic())


def wait_for_boot(shell: ShellProtocol, *, deadline_s: float, state: str,
                  not_boot_id: str | None = None, kdump_loaded: bool = False,
                  sleep: Callable[[float], None] = time.sleep) -> BootFacts:
    """Poll until the host answers SSH (with a boot_id different from ``not_boot_id`` and, if
    asked, the crash kernel loaded). Raises ``DeadlineExceeded`` naming ``state``."""
    last = {"why": "no answer yet"}
    if not_boot_id is not None:
        shell.close()   # a connection from the old boot would hang until its timeout

    def probe() -> BootFacts:
        facts = read_boot_facts(shell, timeout=min(PROBE_TIMEOUT_S, deadline_s))
        if not_boot_id is not None and facts.boot_id == not_boot_id:
            last["why"] = "still the same boot"
            raise RetryableInfraError(last["why"])
        if kdump_loaded and not facts.kdump_loaded:
            last["why"] = "up, but the crash kernel is not loaded yet"
            raise RetryableInfraError(last["why"])
        return facts

    try:
        for attempt in Retrying(stop=stop_after_delay(deadline_s), wait=wait_fixed(SSH_POLL_S), sleep=sleep,
                                retry=retry_if_exception_type(RetryableInfraError), reraise=True):
            with attempt:
                try:
                    return probe()
                except RetryableInfraError as exc:
                    last["why"] = str(exc) or last["why"]
                    shell.close()
                    raise
    except RetryableInfraError:
        raise DeadlineExceeded(state, deadline_s, last["why"]) from None
    raise AssertionError("unreachable")
