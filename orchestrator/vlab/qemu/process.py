"""Facts about a QEMU process that may not be our child (a BMC restarted, a second handle):
alive or gone, ours or a recycled pid, and the last thing it logged."""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.errors import FatalInfraError


def _is_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def is_qemu_command(argv: list[bytes]) -> bool:
    """A QEMU system emulator's command line: started by name, or (a RAS machine's QEMU 11)
    through trixie's loader: ``ld-linux-x86-64.so.2 --library-path L .../qemu-system-aarch64``."""
    if not argv:
        return False
    if argv[0].startswith(b"qemu-system"):
        return True
    return b"/ld-linux" in argv[0] and any(w.rsplit(b"/", 1)[-1].startswith(b"qemu-system") for w in argv[1:4])


def is_our_qemu(pid: int, machine_dir: Path) -> bool:
    """The pid is a live QEMU of this machine (not a stale pidfile or a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _is_alive(pid) and is_qemu_command(cmdline) and str(machine_dir).encode() in b" ".join(cmdline)


def wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _is_alive(pid):   # a zombie (not our child, not yet reaped) counts as gone
        if time.monotonic() > deadline:
            raise FatalInfraError(f"QEMU pid {pid} still present {timeout:.0f} s after SIGKILL")
        time.sleep(0.05)


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
