"""The capabilities of one host that a case cycle drives: shells, power, console, dump layout.

Built from the inventory by fleet/host_handles.py (real backends) or from fakes by unit
tests; the cycle never knows which.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from orchestrator.config.model import Host
from orchestrator.kernel.kdump import KdumpLayout
from orchestrator.protocols.console import ConsoleProtocol
from orchestrator.protocols.event_log import EventLogProtocol
from orchestrator.protocols.firmware import FirmwareErrorProtocol
from orchestrator.protocols.power import PowerProtocol
from orchestrator.protocols.shell import ShellProtocol
from orchestrator.cycle.waitmeter import pause


class PerBoot:
    """What cannot change within one boot of a host (arch, page size, whether an injector is
    usable), learned once per boot_id instead of once per case: a round trip saved each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boot_id: str | None = None
        self._known: dict[Hashable, Any] = {}

    def get(self, boot_id: str, key: Hashable, learn: Callable[[], Any]) -> Any:
        with self._lock:
            if boot_id != self._boot_id:
                self._boot_id, self._known = boot_id, {}
            if key not in self._known:
                self._known[key] = learn()
            return self._known[key]

    def seen(self, boot_id: str) -> None:
        """The host is now in ``boot_id`` (it came back after a panic): forget the old boot."""
        with self._lock:
            if boot_id != self._boot_id:
                self._boot_id, self._known = boot_id, {}

    def knows(self, key: Hashable) -> bool:
        """Known for the last boot seen (a step batching its reads leaves out what is known)."""
        with self._lock:
            return key in self._known


@dataclass
class HostHandles:
    host: Host
    shell: ShellProtocol
    poll_shell: ShellProtocol            # short connect timeout: used while the host reboots
    power: PowerProtocol | None
    console: ConsoleProtocol | None
    kdump: KdumpLayout
    pause: Callable[..., None] = pause           # between polls of the host (waitmeter.pause)
    per_boot: PerBoot = field(default_factory=PerBoot)
    firmware: FirmwareErrorProtocol | None = None   # the platform's RAS firmware, via the BMC
    event_log: EventLogProtocol | None = None       # the BMC's SEL (hosts with the "sel" feature)
