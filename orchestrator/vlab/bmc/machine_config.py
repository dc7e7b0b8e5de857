"""What a lab BMC is configured with (``BmcConfig``) and what it needs from its machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from orchestrator.vlab.bmc.pyghmi_sol_fixes import DEFAULT_SOL_IDLE_TIMEOUT


class Machine(Protocol):
    """What the BMC needs from ``orchestrator.vlab.qemu.machine.QemuMachine``."""

    on_cold_reboot: Callable[[], None] | None   # the BMC hooks its console reconnect here

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def is_running(self) -> bool: ...
    def status(self) -> str: ...
    def reset(self) -> None: ...  # warm; resumes a paused/panicked VM, as a reset button
    def powerdown(self) -> None: ...
    def inject_nmi(self) -> None: ...
    def report_memory_error(self, phys_addr: int, path: str, severity: str) -> None: ...


@dataclass(frozen=True)
class BmcConfig:
    machine_dir: Path
    user: str
    password: str
    address: str = '127.0.0.1'
    port: int = 0                       # 0: the kernel picks a free port (see QemuBmc.port)
    sol_idle_timeout: float = DEFAULT_SOL_IDLE_TIMEOUT
    sol_trace: Path | None = None       # bench: times of serial reads

    @property
    def serial_socket(self) -> Path:
        return self.machine_dir / 'serial.sock'

    @property
    def console_log(self) -> Path:
        return self.machine_dir / 'console.log'
