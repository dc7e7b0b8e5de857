"""One virtual lab server: a QEMU process booting the guest image, driven through QMP.

``start`` is a cold boot (a new QEMU process in its own process group), ``stop`` is a hard
power-off (the process is killed and reaped). ``reset``/``powerdown``/``inject_nmi`` act
through QMP like a BMC's chassis commands. The serial console is a listening unix socket
(``serial.sock``) that the BMC connects to and logs; QEMU's own ``logfile=`` is not used
because QEMU 7.2 writes some characters twice into it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.errors import ConfigError, FatalInfraError, RetryableInfraError
from orchestrator.errors import UnsupportedOperation
from orchestrator.vlab.qemu.cold_reboot import watch_for_reset
from orchestrator.vlab.image.disk import DISK_NAME, create_disk, ensure_host_key, known_hosts_line
from orchestrator.vlab.image.build import ImageManifest
from orchestrator.vlab.qemu.process import is_our_qemu, last_line, wait_gone
from orchestrator.vlab.qemu.qmp import QmpClient, QmpError

log = logging.getLogger(__name__)

__all__ = ["MachineSpec", "QemuMachine", "create_disk", "ensure_host_key", "known_hosts_line"]

#: Per arch: QEMU binary and the board. x86: q35 with an Intel CPU model, because the MCE
#: injection path needs Intel severity rules; pvpanic reports panics without kdump.
_BOARD = {
    "x86_64": ("qemu-system-x86_64", ["-machine", "q35", "-device", "pvpanic"]),
    "aarch64": ("qemu-system-aarch64", ["-machine", "virt,gic-version=3"]),
}
#: arm64 TCG: emulating the architected pointer-authentication cipher (QARMA) doubles the
#: boot time; pauth-impdef=on keeps pauth but with QEMU's cheap implementation-defined hash.
_CPU = {("x86_64", "tcg"): "max,vendor=GenuineIntel", ("aarch64", "tcg"): "max,pauth-impdef=on",
        ("x86_64", "kvm"): "host", ("aarch64", "kvm"): "host"}


@dataclass(frozen=True)
class MachineSpec:
    name: str
    arch: str                          # x86_64 | aarch64
    machine_dir: Path
    image: ImageManifest
    ssh_port: int                      # host port forwarded to the guest's :22
    memory_mb: int = 1024
    smp: int = 2
    accel: str = "tcg"                 # tcg | kvm (see accel.py)
    extra_kernel_args: tuple[str, ...] = ()
    crashkernel: str = "256M"
    #: TCG translation cache cap (MiB); None = QEMU's default (up to 1 GiB). Measured: ~345 MB of
    #: a 766 MB RSS after one kdump cycle of a 768 MB guest was not guest RAM
    tcg_cache_mb: int | None = 128
    #: "single" (all vCPUs round-robin on one host thread) or "multi" (QEMU's default: one
    #: thread per vCPU). Single by default: with multi-threaded TCG the 7.3 guest sometimes dies
    #: at boot in the kernel's live code patching (`Oops: int3` in sched_clock_cpu after
    #: "sched_clock: Marking stable") when two vCPUs run the patched code concurrently on a
    #: loaded host — seen in the lab and in CI after a reset; and two guests on two host cores
    #: gain nothing from MTTCG.
    tcg_thread: str = "single"
    address: str = "127.0.0.1"        # where the SSH port is forwarded on the host
    #: every reboot starts a new QEMU process, so guest RAM touched by earlier boots is
    #: given back to the host (cold_reboot.py says why); False: QEMU's warm reset
    cold_reboot: bool = True

    def __post_init__(self) -> None:
        if self.arch not in _BOARD:
            raise ConfigError(f"machine {self.name}: unknown arch {self.arch!r}")
        if self.accel not in ("tcg", "kvm"):
            raise ConfigError(f"machine {self.name}: accel must be tcg or kvm, not {self.accel!r}")
        if self.tcg_thread not in ("single", "multi"):
            raise ConfigError(f"machine {self.name}: tcg_thread must be single or multi, not {self.tcg_thread!r}")
        if self.image.arch != self.arch:
            raise ConfigError(f"machine {self.name}: {self.image.arch} image for an {self.arch} machine")


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
        #: called after a cold reboot started the new process (the BMC reconnects its console)
        self.on_cold_reboot: Callable[[], None] | None = None

    # -- the command line ----------------------------------------------------------------
    def kernel_cmdline(self) -> str:
        s = self.spec
        return " ".join([f"console={s.image.console}", f"crashkernel={s.crashkernel}",
                         f"vlab.hostname={s.name}", *s.extra_kernel_args])

    def _accel_option(self) -> str:
        s = self.spec
        if s.accel != "tcg":
            return s.accel
        return ",".join(["tcg", f"thread={s.tcg_thread}", *([f"tb-size={s.tcg_cache_mb}"] if s.tcg_cache_mb else [])])

    def command_line(self) -> list[str]:
        s = self.spec
        binary, board = _BOARD[s.arch]
        return [
            binary, "-name", s.name, *board, "-accel", self._accel_option(), "-cpu", _CPU[(s.arch, s.accel)],
            "-m", str(s.memory_mb), "-smp", str(s.smp),
            "-nodefaults", "-no-user-config", "-display", "none",
            # panic=none: the panic event is still emitted, but the guest keeps running so the
            # whole panic text reaches the console (panic=pause cuts it); set at start, not
            # via set-action afterwards, so a panic during early boot is covered too
            "-action", "panic=none",
            *(["-action", "reboot=shutdown", "-qmp", f"unix:{self.events_socket},server=on,wait=off"]
              if s.cold_reboot else []),
            "-kernel", str(s.image.kernel), "-initrd", str(s.image.initrd), "-append", self.kernel_cmdline(),
            "-chardev", f"socket,id=ser0,path={self.serial_socket},server=on,wait=off", "-serial", "chardev:ser0",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-netdev", f"user,id=n0,hostfwd=tcp:{s.address}:{s.ssh_port}-:22", "-device", "virtio-net-pci,netdev=n0",
            # the persistent disk first, so that the guest names it vda; the boot disk follows
            "-drive", f"file={self.disk},format=raw,if=none,id=d0,cache=unsafe",
            "-device", "virtio-blk-pci,drive=d0,serial=vlab-disk",
            "-drive", f"file={s.image.boot_disk},format=raw,if=none,id=d1,readonly=on",
            "-device", "virtio-blk-pci,drive=d1,serial=vlab-boot",
            "-pidfile", str(self.pidfile),
        ]

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
        return self._rebooting or self.pid is not None

    def start(self, timeout: float = 15.0) -> int:
        """Cold boot: a new QEMU process. Returns once QMP answers (the guest is booting)."""
        with self._power_lock:
            pid = self._start(timeout)
            self._generation += 1
            if self.spec.cold_reboot:
                generation = self._generation
                watch_for_reset(self.events_socket, lambda _reason: self._cold_reboot(generation), self.spec.name)
            return pid

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
            self._rebooting = False
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
        if self._rebooting:
            return "rebooting"
        if not self.is_running():
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
        """Press the power button (ACPI on x86, PL061 GPIO on arm64); the guest powers off
        and QEMU exits, so status() becomes 'off'."""
        self.qmp("system_powerdown")

    def inject_nmi(self) -> None:
        try:
            self.qmp("inject-nmi")
        except QmpError as exc:
            if "not" in exc.desc and "supported" in exc.desc:   # arm virt: no NMI source in QEMU 7.2
                raise UnsupportedOperation(f"NMI on {self.spec.name} ({self.spec.arch}): {exc.desc}") from exc
            raise
