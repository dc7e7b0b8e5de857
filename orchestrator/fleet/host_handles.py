"""Opening a host's capabilities from its inventory entry (the real backends), and closing
them: the one place both faces (fleet/runner.py, faces/pytest_plugin.py) get a host from.

Rack servers and virtual lab machines take exactly this path; only unit tests build
``HostHandles`` from fakes.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from orchestrator.config.model import Host
from orchestrator.cycle.handles import HostHandles
from orchestrator.kernel.kdump import layout_for
from orchestrator.protocols.shell import ShellProtocol
from orchestrator.transports.ipmi import IpmiPower
from orchestrator.transports.ipmi_firmware import IpmiFirmware
from orchestrator.transports.ipmi_sel import IpmiEventLog
from orchestrator.transports.sol import SolConsole
from orchestrator.transports.ssh import FabricShell
from orchestrator.tunables import POLL_BANNER_TIMEOUT_S, POLL_COMMAND_TIMEOUT_S, POLL_CONNECT_TIMEOUT_S


class CommandLog:
    """Where a host's SSH commands are logged; pointed at each case's folder in turn."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._file = path
        self.error: OSError | None = None     # the first write the results folder refused

    def point_at(self, path: Path | None) -> None:
        with self._lock:
            self._file = path

    def __call__(self, text: str) -> None:
        with self._lock:
            if self._file is None:
                return
            # Logging runs inside every SSH call, restores too: a full results disk must cost
            # the log, never the command (an armed host would stay armed).
            try:
                with self._file.open("a") as fh:
                    fh.write(f"{datetime.now(timezone.utc).isoformat(timespec='milliseconds')} {text}\n")
            except OSError as exc:
                self.error = self.error or exc


@dataclass(frozen=True)
class HostSession:
    """A host's open capabilities and the log its commands go to."""

    handles: HostHandles
    commands: CommandLog
    lease_shell: ShellProtocol          # its own connection and log (<host>/lease.log): leases are
                                        # renewed while the case's shell waits, and kept out of its log

    @property
    def host(self) -> Host:
        return self.handles.host


@contextmanager
def open_host(host: Host, host_dir: Path, *, commands_log: Path | None = None) -> Iterator[HostSession]:
    """The host's SSH shell, reboot-poll shell, BMC power, SOL console and kdump layout,
    closed on exit. ``host_dir`` receives the raw console log; SSH commands are logged to
    ``commands_log`` until the session's log is pointed elsewhere."""
    host_dir.mkdir(parents=True, exist_ok=True)
    log = CommandLog(commands_log)
    session = HostSession(handles=build_handles(host, log, host_dir), commands=log,
                          lease_shell=FabricShell(host.ssh, log=CommandLog(host_dir / "lease.log")))
    try:
        yield session
    finally:
        close_handles(session.handles)
        session.lease_shell.close()


def build_handles(host: Host, command_log: CommandLog, host_dir: Path) -> HostHandles:
    shell = FabricShell(host.ssh, log=command_log)
    poll_cfg = replace(host.ssh, connect_timeout=POLL_CONNECT_TIMEOUT_S, banner_timeout=POLL_BANNER_TIMEOUT_S,
                       command_timeout=min(host.ssh.command_timeout, POLL_COMMAND_TIMEOUT_S))
    poll_shell = FabricShell(poll_cfg, log=command_log)
    power = IpmiPower(host.bmc) if host.bmc is not None else None
    console = None
    if host.bmc is not None and "sol" in host.features:
        console = SolConsole(host.bmc, raw_log=host_dir / "console.raw.log")
    return HostHandles(host=host, shell=shell, poll_shell=poll_shell, power=power, console=console,
                       kdump=layout_for(host.kdump.layout, host.kdump.path),
                       firmware=IpmiFirmware(power) if power is not None else None,
                       event_log=IpmiEventLog(power) if power is not None and "sel" in host.features else None)


def close_handles(handles: HostHandles) -> None:
    for part in (handles.console, handles.power, handles.shell, handles.poll_shell):
        try:
            if part is not None:
                part.close()
        except Exception:  # noqa: BLE001 - closing must never hide the run's results
            pass
