"""The lab's EINJ platform firmware without booting anything: the ACPI table einj.ko checks
(einj-lab-firmware.md "Constraints from the kernel"), the register blob, the QEMU options, and
the BMC's doorbell reader against a unix socket standing in for QEMU's chardev."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.vlab.bmc.einj_doorbell import EinjDoorbell
from orchestrator.vlab.image.manifest import ImageManifest
from orchestrator.vlab.qemu import einj_table as t
from orchestrator.vlab.qemu.spec import MachineSpec, command_line, kernel_cmdline

BASE = 0x2E000000


def spec(tmp_path: Path, arch: str = "x86_64", memory_mb: int = 768) -> MachineSpec:
    files = {n: tmp_path / n for n in ("vmlinuz", "initrd.img", "boot.img")}
    for path in files.values():
        path.write_bytes(b"\0" * 4096)
    image = ImageManifest(arch=arch, kernel_release="7.3.4", console="ttyS0", kernel=files["vmlinuz"],
                          initrd=files["initrd.img"], crash_initrd=files["initrd.img"], boot_disk=files["boot.img"],
                          packages=(), modules=(), sha256=(), inputs_key="k", built_at="now", build_seconds=0.0)
    return MachineSpec(name="m", arch=arch, machine_dir=tmp_path, image=image, ssh_port=2222, memory_mb=memory_mb)


def test_table_passes_einj_check_table_and_sums_to_zero():
    table = t.table(BASE)
    assert len(table) == 336 and table[:4] == b"EINJ" and sum(table) % 256 == 0
    assert struct.unpack_from("<I", table, 4)[0] == 336
    header_length, _, count = struct.unpack_from("<IB3xI", table, 36)
    assert (header_length, count) == (12, (336 - 48) // 32) == (12, 9)


def test_every_entry_is_one_einj_core_runs_and_accepts():
    rows = [struct.unpack_from("<BBBxBBBBQQQ", t.table(BASE), 48 + 32 * i) for i in range(9)]
    actions = {row[0] for row in rows}
    assert {1, 3, 5, 6, 7, 8} <= actions       # run unconditionally, plus the parameter block's
    for action, instruction, _, space, bits, offset, access, address, value, mask in rows:
        assert mask and address and space in (0, 1) and 1 <= access <= 4
        assert bits + offset <= 8 << (access - 1)
        if space == 1:                          # the doorbell: isa-debugcon takes bytes only
            assert (address, bits, access, instruction) == (0x900, 8, 1, 3)
    by_action = {row[0]: row for row in rows}
    assert by_action[8][1:5] == (2, 0, 0, 32) and by_action[8][7] == BASE   # WRITE_REGISTER, memory
    doorbells = {row[0]: row[8] for row in rows if row[3] == 1}
    assert doorbells == {0: t.BEGIN, 4: t.END, 5: t.EXECUTE} and len(set(doorbells.values())) == 3


def test_registers_offer_0x10_and_0x20_never_busy_and_point_at_the_trigger_table():
    regs = t.registers(BASE)
    types, busy, status, trigger = struct.unpack_from("<QQQQ", regs, t.ERROR_TYPES)
    assert (types, busy, status, trigger) == (0x30, 0, 0, BASE + 0x1000)
    assert struct.unpack_from("<IIII", regs, 0x1000) == (16, 1, 48, 1)
    assert regs[0x1000 + 16] == 0xFF and regs[:t.PARAMS_SIZE] == bytes(t.PARAMS_SIZE)


@pytest.mark.parametrize("memory_mb,base", [(768, 0x2E000000), (1024, 0x3E000000), (4096, 0x7E000000)])
def test_the_base_moves_with_memory_below_the_initrd(memory_mb, base):
    assert t.register_base(memory_mb) == base
    assert t.kernel_args(memory_mb) == [f"memmap=64K${base:#x}"]


def test_too_little_memory_or_too_big_an_initrd_is_refused():
    with pytest.raises(ConfigError, match="512 MB"):
        t.register_base(256)
    with pytest.raises(ConfigError, match="initrd"):
        t.check_initrd(40 << 20)


def test_x86_machines_get_table_registers_and_doorbell_arm64_none(tmp_path):
    x86 = spec(tmp_path)
    argv = command_line(x86, disk=tmp_path / "d", serial_socket=tmp_path / "s", qmp_socket=tmp_path / "q",
                        events_socket=tmp_path / "e", pidfile=tmp_path / "p")
    table = Path(argv[argv.index("-acpitable") + 1].removeprefix("file="))
    assert table.read_bytes() == t.table(BASE)
    assert f"loader,file={tmp_path}/einj-regs-" in " ".join(argv) and f"addr={BASE:#x},force-raw=on" in " ".join(argv)
    assert "isa-debugcon,iobase=0x900,chardev=einj" in argv
    assert f"path={tmp_path / 'einj.sock'},server=on,wait=off" in argv[argv.index("isa-debugcon,iobase=0x900,"
                                                                                 "chardev=einj") - 2]
    assert "memmap=64K$0x2e000000" in kernel_cmdline(x86).split()
    assert "memmap" not in kernel_cmdline(spec(tmp_path, arch="aarch64"))


def test_files_are_named_by_content_and_kept(tmp_path):
    first = t.write_files(tmp_path, BASE)
    assert t.write_files(tmp_path, BASE) == first
    assert t.write_files(tmp_path, t.register_base(1024))[0] != first[0]


class FakeMachine:
    """QMP ``pmemsave`` writes the parameter block the guest left."""

    def __init__(self, spec_: MachineSpec):
        self.spec, self.params, self.raised = spec_, b"", []

    def qmp(self, command, **arguments):
        assert command == "pmemsave" and arguments["val"] == BASE and arguments["size"] == 48
        Path(arguments["filename"]).write_bytes(self.params)


class FakeChardev:
    """QEMU's listening einj.sock: one client; each new QEMU process is a new listener."""

    def __init__(self, path: Path):
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.client = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.client, _ = self.listener.accept()

    def ring(self, *data: int):
        deadline = time.monotonic() + 5
        while self.client is None and time.monotonic() < deadline:
            time.sleep(0.01)
        self.client.sendall(bytes(data))

    def close(self):
        for sock in (self.client, self.listener):
            if sock is not None:
                sock.close()


def params(error_type: int, address: int, flags: int = 2) -> bytes:
    return struct.pack("<IIIIQQ", error_type, 0, flags, 0, address, 0xFFFFFFFFFFFFF000).ljust(48, b"\0")


def wait_served(doorbell: EinjDoorbell, count: int):
    deadline = time.monotonic() + 5
    while len(doorbell.served) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(doorbell.served) == count


def test_doorbell_raises_on_execute_and_follows_a_new_qemu(tmp_path):
    machine = FakeMachine(spec(tmp_path))
    raised = []
    doorbell = EinjDoorbell(machine, raise_error=lambda m, s, addr, path, sev: raised.append((addr, path, sev)))
    chardev = FakeChardev(tmp_path / "einj.sock")
    doorbell.start()
    try:
        machine.params = params(0x10, 0x22810000)
        chardev.ring(t.BEGIN, t.EXECUTE, t.END)
        wait_served(doorbell, 1)
        assert raised == [(0x22810000, "mce", "srao")]
        chardev.close()                                 # QEMU exits: a guest reboot
        chardev = FakeChardev(tmp_path / "einj.sock")   # ... and the next process listens
        doorbell.reconnect_soon()
        machine.params = params(0x20, 0x1FE30000)
        chardev.ring(t.BEGIN, t.EXECUTE, t.TRIGGER, t.END)
        wait_served(doorbell, 2)
        assert raised[-1] == (0x1FE30000, "mce", "fatal")
        machine.params = params(0x10, 0x1000, flags=0)    # no address: nothing to raise
        chardev.ring(t.EXECUTE)
        wait_served(doorbell, 3)
        assert len(raised) == 2 and "no memory address" in doorbell.served[-1][1]
    finally:
        doorbell.stop()
        chardev.close()
