"""The platform's RAS firmware as a capability: make it report a memory error to the OS.

On real servers this is the vendor's own error injection (a BMC OEM command, a BIOS test
menu); in the virtual lab the BMC process plays the firmware and raises what a real platform
would (a machine check on x86, a GHES/CPER record on arm64). ``path`` names how the report
reaches the kernel; ``severity`` is in the terms of that path.
"""

from __future__ import annotations

import abc

from orchestrator.errors import UnsupportedOperation

#: path -> the severities a platform can report on it
SEVERITIES = {
    "mce": ("srao", "fatal"),                           # action-optional UCNA/SRAO; PCC fatal
    "ghes": ("recoverable", "fatal", "corrected"),      # CPER generic error severity
}


def check_report(path: str, severity: str) -> None:
    if path not in SEVERITIES:
        raise UnsupportedOperation(f"firmware error path {path!r} (known: {', '.join(SEVERITIES)})")
    if severity not in SEVERITIES[path]:
        raise UnsupportedOperation(f"{path} severity {severity!r} (known: {', '.join(SEVERITIES[path])})")


class FirmwareErrorProtocol(abc.ABC):
    """Ask the platform firmware to report an uncorrectable (or corrected) memory error."""

    @abc.abstractmethod
    def report_memory_error(self, phys_addr: int, *, path: str, severity: str) -> None:
        """Return once the firmware accepted the request; the report itself reaches the
        kernel asynchronously (wait for its console lines, not for this call)."""

    def close(self) -> None:
        """Release the BMC session."""
