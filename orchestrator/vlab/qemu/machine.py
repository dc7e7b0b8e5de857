"""One virtual lab server: a QEMU process booting the guest image, driven through QMP.

``start`` is a cold boot (a new QEMU process in its own process group), ``stop`` is a hard
power-off (the process is killed and reaped). ``reset``/``powerdown``/``inject_nmi`` act
through QMP like a BMC's chassis commands. The serial console is a listening unix socket
(``serial.sock``) that the BMC connects to and logs; QEMU's own ``logfile=`` is not used
because QEMU 7.2 writes some characters twice into it. The spec and the command line
are in spec.py, QMP in qmp.py, the cold reboot in cold_reboot.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any, Callable

from orchestrator.errors import FatalInfraError, RetryableInfraError
from orchestrator.errors import UnsupportedOperation
from orchestrator.vlab.qemu.cold_reboot import watch_for_reset
from orchestrator.vlab.image.disk import DISK_NAME, create_disk, ensure_host_key, known_hosts_line
from orchestrator.vlab.qemu.process import is_our_qemu, last_line, wait_gone
from orchestrator.vlab.qemu import ghes, mce, platform_errors  # noqa: F401 (paths register themselves)
from orchestrator.vlab.qemu.qmp import QmpClient, QmpError
from orchestrator.vlab.qemu.spec import MachineSpec, command_line

log = logging.getLogger(__name__)

__all__ = ["MachineSpec", "QemuMachine", "create_disk", "ensure_host_key", "known_hosts_line"]


class QemuMachine:
    def __init__(self, spec: MachineSpec):
        self.spec = spec
        d = spec.machine_dir
        self.serial_socket, self.qmp_socket = d / "serial.sock", d / "qmp.sock"
        self.events_socket = d / "events.sock"
        self.pidfile, self.disk, self.qemu_log = d / "qemu.pid", d / DISK_NAME, d / "qemu.log"
        self._qmp = QmpClient(self.qmp_socket)
        self._proc: subprocess.Popen[bytes] | None = None
        #: start/stop/cold reboot are serialised; a cold reboot acts only if no start or
        #: stop happened since the process it watches was started (same generation)
        self._power_lock = threading.RLock()
        self._generation = 0
        self._rebooting = False
        self._watcher: threading.Thread | None = None     # the reset watcher of this generation
        #: called after a cold reboot started the new process (the BMC reconnects its console)
        self.on_cold_reboot: Callable[[], None] | None = None

    def command_line(self) -> list[str]:
        return command_line(self.spec, disk=self.disk, serial_socket=self.serial_socket,
                            qmp_socket=self.qmp_socket, events_socket=self.events_socket,
                            pidfile=self.pidfile)

    # -- process -------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_our_qemu(pid, self.spec.machine_dir) else None

    def is_running(self) -> bool:
        """Powered: a QEMU process exists, or one is being replaced by a cold reboot."""
        return self._rebooting or self.pid is not None or self._reset_pending()

    def _reset_pending(self) -> bool:
        """The process is gone but its reset watcher has not had its say: QEMU sends the reset
        event before it exits, and on a loaded host the watcher thread ran only after the exit
        (the BMC reported 'off' in the middle of a guest reboot, once in a CI run). A process
        that ended without a reset ends its watcher at once (the monitor closes)."""
        watcher = self._watcher
        return watcher is not None and watcher.is_alive() and self.pid is None

    def start(self, timeout: float = 15.0) -> int:
        """Cold boot: a new QEMU process. Returns once QMP answers (the guest is booting)."""
        with self._power_lock:
            pid = self._start(timeout)
            self._generation += 1
            if self.spec.cold_reboot:
                self._watch()
            return pid

    def adopt(self) -> bool:
        """A QEMU left running by a BMC that died (``kill -9``): a BMC restarted on this
        machine watches its resets as if it had started it. Without this the next guest
        reboot (the crash kernel's, after a dump) ended that QEMU and left the machine off."""
        with self._power_lock:
            if self.pid is None or not self.spec.cold_reboot:
                return False
            self._generation += 1
            self._watch()
            return True

    def _watch(self) -> None:
        """Watch the current process for a reset (cold_reboot.py); a later start or stop voids it."""
        generation = self._generation
        self._watcher = watch_for_reset(self.events_socket, lambda _reason: self._cold_reboot(generation),
                                        self.spec.name)

    def _start(self, timeout: float) -> int:
        if self.pid is not None:
            raise FatalInfraError(f"{self.spec.name}: QEMU already running (pid {self.pid})")
        if not self.disk.exists():
            raise FatalInfraError(f"{self.spec.name}: no disk at {self.disk} (create_disk first)")
        self._remove_sockets()
        with open(self.qemu_log, "ab") as log:
            log.write(f"--- start {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(self.command_line())}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True)
            except FileNotFoundError as exc:
                raise FatalInfraError(f"{self.spec.name}: {exc.filename} not found (install QEMU)") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FatalInfraError(f"{self.spec.name}: QEMU exited at start (rc {self._proc.returncode}): "
                                      f"{last_line(self.qemu_log)}")
            try:
                self._qmp.execute("query-status", timeout=1.0)
                return self._proc.pid
            except RetryableInfraError:
                time.sleep(0.05)
        self.stop()
        raise FatalInfraError(f"{self.spec.name}: QMP did not answer within {timeout:.0f} s of QEMU start")

    def stop(self, timeout: float = 10.0) -> None:
        """Hard power-off: SIGKILL the QEMU process group and wait until it is gone."""
        with self._power_lock:
            self._generation += 1   # a reset announced by the killed process is void
            self._rebooting, self._watcher = False, None
            self._kill(timeout)

    def _cold_reboot(self, generation: int) -> None:
        """The watched QEMU announced a reset and is exiting: boot a new one in its place."""
        with self._power_lock:
            if generation != self._generation:
                return   # stopped or restarted on purpose since: that decision stands
            self._rebooting = True
            try:
                self._wait_exit()
                self._proc = None
                self.start()
            except FatalInfraError as error:
                log.error("%s: cold reboot failed, machine is off: %s", self.spec.name, error)
                self._kill(10.0)
            finally:
                self._rebooting = False
        if self.on_cold_reboot is not None:
            self.on_cold_reboot()

    def _wait_exit(self, timeout: float = 10.0) -> None:
        """QEMU exits by itself after the reset; one that lingers is killed (a hard reset)."""
        pid = self.pid
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while self.pid is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.pid is not None:
            self._kill(timeout)

    def _remove_sockets(self) -> None:
        for stale in (self.serial_socket, self.qmp_socket, self.events_socket, self.pidfile):
            stale.unlink(missing_ok=True)

    def _kill(self, timeout: float) -> None:
        pid = self.pid
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self._proc is not None:
                self._proc.wait(timeout)
            else:
                wait_gone(pid, timeout)
        self._proc = None
        self._remove_sockets()

    # -- QMP: what a BMC does ---------------------------------------------------------------
    def qmp(self, command: str, **arguments: Any) -> Any:
        return self._qmp.execute(command, arguments or None)

    def status(self) -> str:
        """QEMU's run state ('running', 'paused', 'shutdown', ...), 'rebooting' while a cold
        reboot replaces the process, or 'off' without a process."""
        if self._rebooting or self._reset_pending():
            return "rebooting"
        if self.pid is None:
            return "off"
        return str(self._qmp.execute("query-status", timeout=1.0)["status"])

    def reset(self) -> None:
        """Reset without a power-off (the BMC's reset line): power stays on throughout. With
        cold reboots the reset ends this QEMU and a new one boots (cold_reboot.py); keeping
        the process would not keep the reset warm anyway: on x86 SeaBIOS answers a QMP reset
        with a reset of its own (seen: switching the action around the request still gave a
        new process). A paused machine is resumed, as a reset button would."""
        self.qmp("system_reset")
        if self.spec.cold_reboot:
            return
        if self.status() in ("paused", "prelaunch", "guest-panicked"):
            self.qmp("cont")

    def powerdown(self) -> None:
        """Press the power button (ACPI on x86 and RAS arm64, PL061 GPIO on arm64 without firmware); the guest powers off
        and QEMU exits, so status() becomes 'off'."""
        self.qmp("system_powerdown")

    def inject_nmi(self) -> None:
        try:
            self.qmp("inject-nmi")
        except QmpError as exc:
            # arm virt has no NMI source: QEMU 7.2 says "... not supported ...", QEMU 11 (the RAS
            # machines) "machine does not provide NMIs"; a real BMC answers 0xD5 either way
            if ("not" in exc.desc and "supported" in exc.desc) or "does not provide NMIs" in exc.desc:
                raise UnsupportedOperation(f"NMI on {self.spec.name} ({self.spec.arch}): {exc.desc}") from exc
            raise

    def report_memory_error(self, phys_addr: int, path: str, severity: str) -> None:
        """Play the platform firmware: report a memory error at ``phys_addr`` (platform_errors.py)."""
        platform_errors.report_memory_error(self, self.spec, phys_addr, path, severity)
