"""Building a host's capabilities from its inventory entry: the real backends.

Rack servers and virtual lab machines take exactly this path; only unit tests build
``HostHandles`` from fakes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from orchestrator.config.model import Host
from orchestrator.cycle.machine import HostHandles
from orchestrator.kernel.kdump import layout_for
from orchestrator.transports.ipmi import IpmiPower
from orchestrator.transports.sol import SolConsole
from orchestrator.transports.ssh import FabricShell
from orchestrator.tunables import POLL_BANNER_TIMEOUT_S, POLL_COMMAND_TIMEOUT_S, POLL_CONNECT_TIMEOUT_S



def build_handles(host: Host, command_log, host_dir: Path) -> HostHandles:
    host_dir.mkdir(parents=True, exist_ok=True)
    shell = FabricShell(host.ssh, log=command_log)
    poll_cfg = replace(host.ssh, connect_timeout=POLL_CONNECT_TIMEOUT_S, banner_timeout=POLL_BANNER_TIMEOUT_S,
                       command_timeout=min(host.ssh.command_timeout, POLL_COMMAND_TIMEOUT_S))
    poll_shell = FabricShell(poll_cfg, log=command_log)
    power = IpmiPower(host.bmc) if host.bmc is not None else None
    console = None
    if host.bmc is not None and "sol" in host.features:
        console = SolConsole(host.bmc, raw_log=host_dir / "console.raw.log")
    return HostHandles(host=host, shell=shell, poll_shell=poll_shell, power=power, console=console,
                       kdump=layout_for(host.kdump.layout, host.kdump.path))
