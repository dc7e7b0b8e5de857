"""What an operator does to a host outside a run: see or break its lease, and disarm it
(put back the sysctls and crash kernel its arm journal records). Each host is reached with
one short-lived SSH shell; hosts are handled in parallel, and one host's trouble is that
host's line, never the others'."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from orchestrator.config.model import Host
from orchestrator.cycle import arm_journal
from orchestrator.errors import OrchestratorError
from orchestrator.fleet import lease
from orchestrator.kernel.kdump import kdump_loaded
from orchestrator.transports.ssh import FabricShell
from orchestrator.tunables import KDUMP_RELOAD_TIMEOUT_S


@dataclass(frozen=True)
class HostLine:
    host: str
    ok: bool
    text: str


def for_each_host(hosts, action: Callable[[Host, FabricShell], str]) -> list[HostLine]:
    def one(host: Host) -> HostLine:
        shell = FabricShell(host.ssh)
        try:
            return HostLine(host.name, True, action(host, shell))
        except OrchestratorError as exc:
            return HostLine(host.name, False, str(exc))
        finally:
            shell.close()

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(hosts)))) as pool:
        return list(pool.map(one, hosts))


def lease_text(host: Host, shell) -> str:
    held = lease.read(shell, host.name, host.state_dir)
    if not held:
        return "free"
    state = "EXPIRED" if held["expired"] == "yes" else f"{held['left_s']} s left"
    return f"{lease.describe(held)}; {state}"


def break_text(host: Host, shell) -> str:
    was = lease.break_lease(shell, host.name, host.state_dir)
    return f"broken (was {lease.describe(was)})" if was else "was free"


def disarm_text(host: Host, shell) -> str:
    """Restore the host from its journal; with none, only make sure the crash kernel is
    loaded (a case that unloaded it may have died before writing anything)."""
    record = arm_journal.read_record(shell, host.state_dir)
    if record is None:
        if "kdump" in host.features and not kdump_loaded(shell):
            shell.run(arm_journal.RELOAD_KDUMP, timeout=KDUMP_RELOAD_TIMEOUT_S, check=False)
            return "not armed; crash kernel " + ("loaded again" if kdump_loaded(shell) else "NOT loaded")
        return "not armed"
    done = arm_journal.restore(shell, host.state_dir, record, timeout=KDUMP_RELOAD_TIMEOUT_S)
    return f"disarmed (armed by {record.describe()}): " + ("; ".join(done) or "values were already back")
