"""Every reboot of a lab machine is a cold boot: a new QEMU process per boot.

Why: QEMU never gives guest RAM back to the host on a warm reset, and each boot (and each
crash kernel) touches other pages, so a 768 MB machine that kdumped five times had grown
from 410 MB to 824 MB resident (target: 700 MB). Nothing the orchestrator can observe is
lost: a real server's memory contents do not survive its reset either, and the boot takes
~0.2 s longer (a process start).

How: QEMU runs with ``-action reboot=shutdown``, so any reset (the guest's ``reboot``, the
crash kernel's reboot after the dump, a ``kernel.panic`` timeout, the BMC's reset through QMP
``system_reset``) ends the process after a ``SHUTDOWN`` event whose ``reason`` names a reset.
Power stays on through it: the machine reports 'rebooting', so the BMC says "on". A second QMP monitor
(``events.sock``; the first serves one short command at a time) is held open by a watcher
thread per process; on such an event it asks the machine to boot again. A power-off
(guest ``poweroff``, the BMC's hard off) is not a reset and stays off.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from orchestrator.errors import RetryableInfraError
from orchestrator.vlab.qemu.qmp import watch_events

log = logging.getLogger(__name__)

#: QEMU's ShutdownCause values that mean "reset", as named in QMP's SHUTDOWN event
RESET_REASONS = frozenset({"guest-reset", "host-qmp-system-reset"})
CONNECT_TIMEOUT_SECONDS = 5.0   # QEMU is already answering on its first monitor


def watch_for_reset(socket_path: Path, on_reset: Callable[[str], None], name: str) -> threading.Thread:
    """Start a daemon thread that calls ``on_reset(reason)`` once, if the QEMU serving
    ``socket_path`` announces a reset; the thread ends when that QEMU goes away."""
    thread = threading.Thread(target=_watch, args=(socket_path, on_reset), name=f"reset-watch {name}",
                              daemon=True)
    thread.start()
    return thread


def _watch(socket_path: Path, on_reset: Callable[[str], None]) -> None:
    try:
        # No timeout on the wait itself: events come when they come, and QEMU's exit
        # closes the monitor, which ends the wait.
        event = watch_events(socket_path, lambda e: _reset_reason(e) is not None,
                             CONNECT_TIMEOUT_SECONDS)
    except RetryableInfraError:
        # Without the watcher the next reboot leaves the machine off; the BMC then reports
        # off and the orchestrator powers it on: slower, not wrong. Say so in the BMC log.
        log.warning("no QMP event monitor at %s: a guest reboot will power the machine off", socket_path)
        return
    if event is not None:
        reason = str(_reset_reason(event))
        log.info("QEMU announced a reset (%s): cold boot follows", reason)
        on_reset(reason)


def _reset_reason(message: dict[str, Any]) -> str | None:
    if message.get("event") != "SHUTDOWN":
        return None
    reason = str((message.get("data") or {}).get("reason", ""))
    return reason if reason in RESET_REASONS else None
