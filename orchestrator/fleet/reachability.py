"""Reachability probe for ``inventory check``: one real SSH command and one BMC power query."""

from __future__ import annotations

from orchestrator.config.model import Host
from orchestrator.errors import OrchestratorError
from orchestrator.cycle.hostwait import read_boot_facts


def probe_host(host: Host) -> tuple[Host, str, str]:
    from orchestrator.transports.ipmi import IpmiPower
    from orchestrator.transports.ssh import FabricShell

    try:
        shell = FabricShell(host.ssh)
        try:
            facts = read_boot_facts(shell, timeout=host.ssh.connect_timeout + 5)
            ssh = f"ok {facts.kernel_release}, kdump {'loaded' if facts.kdump_loaded else 'NOT loaded'}"
        finally:
            shell.close()
    except OrchestratorError as exc:
        ssh = f"FAIL {exc}"
    if host.bmc is None:
        return host, ssh, "none"
    try:
        power = IpmiPower(host.bmc)
        try:
            bmc = f"ok power {power.status()}"
        finally:
            power.close()
    except OrchestratorError as exc:
        bmc = f"FAIL {exc}"
    return host, ssh, bmc
