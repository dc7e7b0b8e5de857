"""The capabilities of one host that a case cycle drives: shells, power, console, dump layout.

Built from the inventory by fleet/host_handles.py (real backends) or from fakes by unit
tests; the cycle never knows which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from orchestrator.config.model import Host
from orchestrator.kernel.kdump import KdumpLayout
from orchestrator.protocols.console import ConsoleProtocol
from orchestrator.protocols.power import PowerProtocol
from orchestrator.protocols.shell import ShellProtocol


@dataclass
class HostHandles:
    host: Host
    shell: ShellProtocol
    poll_shell: ShellProtocol            # short connect timeout: used while the host reboots
    power: PowerProtocol | None
    console: ConsoleProtocol | None
    kdump: KdumpLayout
    pause: Callable[[float], None] = time.sleep   # between polls of the host
