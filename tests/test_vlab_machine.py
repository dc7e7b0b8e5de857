"""End to end on real QEMU guests (TCG): boot, pinned SSH, reset, kdump, power button.

One guest at a time: each class owns its machine (class scope), torn down by a finalizer
that kills QEMU's process group even if the test body failed half way.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, FatalInfraError, RetryableInfraError
from orchestrator.errors import UnsupportedOperation
from orchestrator.vlab.image import build as image
from orchestrator.vlab.qemu import accel
from orchestrator.vlab.qemu.machine import MachineSpec, QemuMachine, create_disk, ensure_host_key, known_hosts_line
from orchestrator.vlab.qemu.serial_tap import SerialTap


class Guest:
    """A started machine plus the client side: console, pinned OpenSSH."""

    def __init__(self, machine: QemuMachine, key: Path, known_hosts: Path):
        self.machine, self.key, self.known_hosts = machine, key, known_hosts
        self.console = SerialTap(machine.serial_socket)

    def ssh(self, command: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-n", "-i", str(self.key), "-p", str(self.machine.spec.ssh_port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=2",
                "-o", "ServerAliveCountMax=2", "root@127.0.0.1", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def boot_id(self) -> str:
        result = self.ssh("cat /proc/sys/kernel/random/boot_id")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def wait_ready(self, since: int, timeout: float = 90.0) -> None:
        self.console.wait_for("VLAB: ready", since, timeout)


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("client") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _boot(arch: str, tmp: Path, client_key: Path, request: pytest.FixtureRequest) -> Guest:
    manifest = image.build_image(arch, log=lambda _msg: None)
    machine_dir = tmp / f"test-{arch}"
    host_key = ensure_host_key(machine_dir)
    create_disk(machine_dir, host_key, Path(f"{client_key}.pub"))
    port = _free_port()
    known_hosts = tmp / "known_hosts"
    known_hosts.write_text(known_hosts_line(host_key, "127.0.0.1", port) + "\n")
    machine = QemuMachine(MachineSpec(name=f"test-{arch}", arch=arch, machine_dir=machine_dir,
                                      image=manifest, ssh_port=port))

    def kill() -> None:
        pid = machine.pid
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
        machine.stop()

    request.addfinalizer(kill)
    machine.start()
    guest = Guest(machine, client_key, known_hosts)
    request.addfinalizer(guest.console.close)
    guest.wait_ready(0)
    return guest


def _crash_and_collect(guest: Guest, expect_dump: bool) -> str:
    """sysrq crash -> crash kernel saves -> reboot -> back on SSH; returns the new dump dir."""
    before, qemu_before = guest.boot_id(), guest.machine.pid
    crashed_after = int(guest.ssh("date +%s").stdout)
    since = guest.console.mark()
    # detached: the SSH session must end before the kernel dies under it
    fired = guest.ssh("nohup setsid sh -c 'sleep 1; echo c > /proc/sysrq-trigger' </dev/null >/dev/null 2>&1 &")
    assert fired.returncode == 0, fired.stderr
    for milestone in ("sysrq triggered crash", "VLAB: crash kernel up", "VLAB: dump saved",
                      "VLAB: crash kernel rebooting", "VLAB: sshd started", "VLAB: ready"):
        guest.console.wait_for(milestone, since, 120)
    assert guest.boot_id() != before
    # the crash kernel's reboot is a cold boot: a new QEMU, so RAM touched so far is freed
    assert guest.machine.pid not in (None, qemu_before)
    newest = guest.ssh("ls -t /var/crash | head -n 1").stdout.strip()
    assert re.fullmatch(r"\d{12}", newest), newest
    # a crash in the same minute as an earlier one reuses its directory: check the file is new
    written = int(guest.ssh(f"stat -c %Y /var/crash/{newest}/dmesg.{newest}").stdout)
    assert written >= crashed_after - 2
    files = guest.ssh(f"ls /var/crash/{newest}").stdout.split()
    assert f"dmesg.{newest}" in files and f"vmcoreinfo.{newest}" in files
    assert "dump-incomplete" not in files
    assert (f"dump.{newest}" if expect_dump else f"dump-unsupported.{newest}") in files, files
    dmesg = guest.ssh(f"cat /var/crash/{newest}/dmesg.{newest}").stdout
    assert "Kernel panic - not syncing: sysrq triggered crash" in dmesg
    info = guest.ssh(f"cat /var/crash/{newest}/vmcoreinfo.{newest}").stdout
    assert f"OSRELEASE={guest.machine.spec.image.kernel_release}" in info
    return newest


# class scope: torn down when its class is done, so only one guest runs at a time
@pytest.fixture(scope="class")
def x86_guest(tmp_path_factory: pytest.TempPathFactory, client_key: Path, request: pytest.FixtureRequest) -> Guest:
    return _boot("x86_64", tmp_path_factory.mktemp("x86"), client_key, request)


@pytest.fixture(scope="class")
def arm_guest(tmp_path_factory: pytest.TempPathFactory, client_key: Path, request: pytest.FixtureRequest) -> Guest:
    return _boot("aarch64", tmp_path_factory.mktemp("arm"), client_key, request)


class TestMachineWithoutBooting:
    """Cheap checks of the process/QMP plumbing; no guest is booted."""

    @pytest.fixture()
    def spec(self, tmp_path: Path) -> MachineSpec:
        return MachineSpec(name="idle", arch="x86_64", machine_dir=tmp_path / "idle",
                           image=image.load_manifest("x86_64"), ssh_port=_free_port())

    def test_never_started_machine_is_off(self, spec: MachineSpec) -> None:
        machine = QemuMachine(spec)
        assert machine.status() == "off" and not machine.is_running()
        machine.stop()   # idempotent: nothing to stop is not an error

    def test_a_reset_announced_but_not_yet_handled_is_not_a_power_off(self, spec: MachineSpec) -> None:
        """QEMU exits right after announcing a reset; until its watcher thread has handled the
        event, the machine is rebooting, not off (the BMC said 'off' mid-reboot once in CI)."""
        machine, handled = QemuMachine(spec), threading.Event()
        machine._watcher = threading.Thread(target=handled.wait, daemon=True)   # the watcher, not run yet
        machine._watcher.start()
        try:
            assert machine.status() == "rebooting" and machine.is_running()
        finally:
            handled.set()
            machine._watcher.join()
        assert machine.status() == "off" and not machine.is_running()      # it ended: no reset came

    def test_a_stop_voids_a_pending_reset(self, spec: MachineSpec) -> None:
        machine, handled = QemuMachine(spec), threading.Event()
        machine._watcher = threading.Thread(target=handled.wait, daemon=True)
        machine._watcher.start()
        try:
            machine.stop()
            assert machine.status() == "off" and not machine.is_running()
        finally:
            handled.set()

    def test_start_without_disk_is_fatal(self, spec: MachineSpec) -> None:
        with pytest.raises(FatalInfraError, match="no disk"):
            QemuMachine(spec).start()

    def test_qmp_on_a_dead_socket_is_retryable_not_a_hang(self, spec: MachineSpec) -> None:
        started = time.monotonic()
        with pytest.raises(RetryableInfraError):
            QemuMachine(spec).qmp("query-status")
        assert time.monotonic() - started < 2

    def test_spec_rejects_a_mismatched_image(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="image"):
            MachineSpec(name="x", arch="aarch64", machine_dir=tmp_path, image=image.load_manifest("x86_64"),
                        ssh_port=1)

    def test_disk_and_host_key_are_made_once(self, tmp_path: Path, client_key: Path) -> None:
        key = ensure_host_key(tmp_path)
        disk = create_disk(tmp_path, key, Path(f"{client_key}.pub"))
        first = (key.read_bytes(), disk.stat().st_mtime_ns)
        assert ensure_host_key(tmp_path) == key and create_disk(tmp_path, key, "ignored") == disk
        assert (key.read_bytes(), disk.stat().st_mtime_ns) == first
        assert known_hosts_line(key, "127.0.0.1", 40022).startswith("[127.0.0.1]:40022 ssh-ed25519 ")


@pytest.mark.vlab
def test_accel_probe_is_cached() -> None:
    manifest = image.load_manifest("x86_64")
    first = accel.choose_accel(manifest, reprobe=True)
    assert first.accel in ("kvm", "tcg") and first.reason
    started = time.monotonic()
    assert accel.choose_accel(manifest) == first
    assert time.monotonic() - started < 1   # answered from the cache, no second boot
    assert accel.choose_accel(image.load_manifest("aarch64")).accel == "tcg" or os.uname().machine == "aarch64"


@pytest.mark.vlab
@pytest.mark.x86_64
class TestX86Machine:
    def test_pinned_openssh_login(self, x86_guest: Guest) -> None:
        result = x86_guest.ssh("uname -r")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == x86_guest.machine.spec.image.kernel_release

    def test_guest_contract_state(self, x86_guest: Guest) -> None:
        out = x86_guest.ssh("cat /proc/sys/vm/panic_on_unrecoverable_memory_failure /sys/kernel/kexec_crash_loaded;"
                        " test -e /run/vlab-ready && echo READY; ls /sys/kernel/debug >/dev/null && echo DEBUGFS;"
                        " for c in sh dd od awk sysctl modprobe mount grep head tail sed base64 date cat ls stat"
                        " nohup setsid sleep; do command -v $c >/dev/null || echo MISSING-$c; done").stdout.split()
        assert out[:2] == ["0", "1"] and "READY" in out and "DEBUGFS" in out, out
        assert not [w for w in out if w.startswith("MISSING")], out
        assert x86_guest.ssh("mount | grep ' /var/crash '").returncode == 0

    def test_qmp_status_and_nmi(self, x86_guest: Guest) -> None:
        assert x86_guest.machine.status() == "running"
        since = x86_guest.console.mark()
        x86_guest.machine.inject_nmi()
        x86_guest.console.wait_for("NMI received", since, 20)

    def test_host_key_survives_reset(self, x86_guest: Guest) -> None:
        before, qemu_before = x86_guest.boot_id(), x86_guest.machine.pid
        since = x86_guest.console.mark()
        x86_guest.machine.reset()
        x86_guest.wait_ready(since)
        assert x86_guest.boot_id() != before   # StrictHostKeyChecking=yes against the pinned key
        # a reset replaces the QEMU process (cold_reboot.py) while power stays on
        assert x86_guest.machine.pid not in (None, qemu_before) and x86_guest.machine.status() == "running"

    def test_guest_reboot_is_a_cold_boot(self, x86_guest: Guest) -> None:
        qemu_before, since = x86_guest.machine.pid, x86_guest.console.mark()
        fired = x86_guest.ssh("nohup setsid sh -c 'sleep 1; reboot -f' </dev/null >/dev/null 2>&1 &")
        assert fired.returncode == 0, fired.stderr
        x86_guest.wait_ready(since)
        assert x86_guest.machine.pid not in (None, qemu_before)

    def test_kdump_end_to_end(self, x86_guest: Guest) -> None:
        _crash_and_collect(x86_guest, expect_dump=True)

    def test_a_second_handle_finds_the_running_machine(self, x86_guest: Guest) -> None:
        other = QemuMachine(x86_guest.machine.spec)   # as another process would, via the pidfile
        assert other.pid == x86_guest.machine.pid and other.status() == "running"

    def test_powerdown_ends_the_process(self, x86_guest: Guest) -> None:
        pid = x86_guest.machine.pid
        _power_button_and_wait_off(x86_guest)
        assert pid is not None and not Path(f"/proc/{pid}").exists()


@pytest.mark.vlab
@pytest.mark.aarch64
class TestAarch64Machine:
    def test_ssh_and_sysctl(self, arm_guest: Guest) -> None:
        out = arm_guest.ssh("uname -m; cat /proc/sys/vm/panic_on_unrecoverable_memory_failure"
                        " /sys/kernel/kexec_crash_loaded").stdout.split()
        assert out == ["aarch64", "0", "1"], out

    def test_nmi_is_unsupported(self, arm_guest: Guest) -> None:
        with pytest.raises(UnsupportedOperation):
            arm_guest.machine.inject_nmi()

    def test_kdump_saves_dmesg_and_reason(self, arm_guest: Guest) -> None:
        newest = _crash_and_collect(arm_guest, expect_dump=False)
        reason = arm_guest.ssh(f"cat /var/crash/{newest}/dump-unsupported.{newest}").stdout
        assert "makedumpfile" in reason and "failed" in reason

    def test_power_button_via_pl061(self, arm_guest: Guest) -> None:
        _power_button_and_wait_off(arm_guest)


def _power_button_and_wait_off(guest: Guest) -> None:
    """ACPI/GPIO power button: the guest's handler powers off, and the QEMU process ends."""
    since = guest.console.mark()
    guest.machine.powerdown()
    guest.console.wait_for("VLAB: power button -> poweroff", since, 30)
    deadline = time.monotonic() + 30
    while guest.machine.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)   # polling the process table against a deadline
    assert guest.machine.status() == "off"
