"""The lab's ACPI APEI EINJ table: the guest's real einj.ko injects through it, the BMC plays
the firmware behind it (vlab/bmc/einj_doorbell.py).

Design measured in ../shared/reference/einj-lab-firmware.md:

- The table (``-acpitable file=``: header, checksum, 9 instruction entries, 336 bytes) points
  at a 64 KiB register block in guest RAM that the kernel keeps off (``memmap=64K$<base>``),
  filled at every reset by QEMU's generic loader with the blob made here.
- BEGIN, EXECUTE, END and TRIGGER each write one byte to SystemIO port 0x900, an
  ``isa-debugcon`` whose chardev is the unix socket ``einj.sock`` the BMC reads: the doorbell.
  isa-debugcon takes byte accesses only (GAS bit_width 8, access_width 1).
- einj.ko copies its request (type, flags, address, mask) into the parameter block at the
  base (SET_ERROR_TYPE_WITH_ADDRESS, ACPI 5 mode); on EXECUTE the firmware reads it back.

The firmware cannot answer "busy" or "failed" (QEMU 7.2 has no QMP command that writes guest
memory), so CHECK_BUSY_STATUS and GET_COMMAND_STATUS always read 0: never busy, success.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from orchestrator.errors import ConfigError

MIB = 1 << 20
DOORBELL_PORT = 0x900               # 0xe9/0x402 carry SeaBIOS debug, 0x600-0x67f ICH9 PM, 0x700 SMBus
DOORBELL_CHARDEV = "einj"
REGION_SIZE = 64 * 1024             # what memmap= reserves; the registers use the first 4 KiB + 48 bytes
#: offsets in the register block
PARAMS, SET_TYPE, ERROR_TYPES, BUSY, STATUS, TRIGGER_PTR, TRIGGER_TABLE = (
    0x000, 0x100, 0x108, 0x110, 0x118, 0x120, 0x1000)
PARAMS_SIZE = 48                    # struct set_error_type_with_address in 7.3 (with the EINJv2 header)
#: the error types the platform offers: memory uncorrectable non-fatal (0x10) and fatal (0x20)
OFFERED_TYPES = 0x10 | 0x20
#: the doorbell byte of each firmware call (each its own, so the BMC tells them apart)
BEGIN, END, EXECUTE, TRIGGER = 0x01, 0x04, 0x05, 0xFF

# ACPI EINJ actions and instructions (ACPI 6.5 §18.6.1, include/acpi/actbl1.h)
_ACT = {"begin": 0, "get_trigger": 1, "set_type": 2, "get_type": 3, "end": 4, "execute": 5,
        "check_busy": 6, "get_status": 7, "set_type_with_address": 8, "trigger": 0xFF}
READ_REGISTER, WRITE_REGISTER, WRITE_REGISTER_VALUE = 0, 2, 3
SYSTEM_MEMORY, SYSTEM_IO = 0, 1
_ACCESS = {8: 1, 16: 2, 32: 3, 64: 4}          # GAS access size codes: byte .. qword
_ENTRY = struct.Struct("<BBBxBBBBQQQ")          # action, instruction, flags, GAS, value, mask
_HEADER = struct.Struct("<4sIBB6s8sI4sI")       # the 36-byte ACPI table header
_INJECTION_HEADER = struct.Struct("<IB3xI")     # header_length (12), flags, entry count
#: QEMU 7.2 q35 keeps guest RAM below 4 GiB up to 0xb0000000, or 2 GiB when there is more
_Q35_LOWMEM, _Q35_LOWMEM_BIG = 0xB0000000, 0x80000000
#: QEMU's -kernel loader copies the initrd to the top of low RAM (minus 160 KiB of ACPI data):
#: 0x2f6dd000-0x2ffcffff for the 9.4 MB lab initrd at -m 768. The block sits this far below
#: the top, so that no initrd up to ~31 MiB lands on it after the loader filled it (seen: the
#: option ROM's copy overwrote the block; einj then still loaded but offered no types).
_BELOW_TOP = 32 * MIB
#: crashkernel: memmap= takes the block out of RAM before the kernel places that reservation,
#: so the two never overlap (seen at -m 768: "crashkernel reserved: 0x1e000000 - 0x2e000000",
#: right below the block); below 512 MiB the lab's crashkernel=256M would not fit beside it.
MIN_MEMORY_MB = 512


def register_base(memory_mb: int) -> int:
    """Where the register block goes for a guest of ``memory_mb``: 32 MiB below the top of low
    RAM (see _BELOW_TOP), so it moves with ``-m`` and stays clear of the initrd."""
    if memory_mb < MIN_MEMORY_MB:
        raise ConfigError(f"EINJ needs at least {MIN_MEMORY_MB} MB of guest RAM, not {memory_mb}")
    ram = memory_mb * MIB
    low_top = ram if ram < _Q35_LOWMEM else _Q35_LOWMEM_BIG
    return low_top - _BELOW_TOP


def check_initrd(initrd_bytes: int) -> None:
    if initrd_bytes > _BELOW_TOP - MIB:
        raise ConfigError(f"the lab initrd ({initrd_bytes} bytes) would overwrite the EINJ registers "
                          f"{_BELOW_TOP // MIB} MiB below the top of RAM: raise _BELOW_TOP")


def _gas(space: int, bits: int, address: int) -> tuple[int, int, int, int, int]:
    return space, bits, 0, _ACCESS[bits], address


def _entry(action: str, instruction: int, gas: tuple, value: int = 0, mask: int = 0) -> bytes:
    return _ENTRY.pack(_ACT[action], instruction, 0, *gas, value, mask)


def _doorbell(action: str, byte: int) -> bytes:
    return _entry(action, WRITE_REGISTER_VALUE, _gas(SYSTEM_IO, 8, DOORBELL_PORT), byte, 0xFF)


def _read(action: str, address: int, mask: int) -> bytes:
    return _entry(action, READ_REGISTER, _gas(SYSTEM_MEMORY, 64, address), 0, mask)


def entries(base: int) -> list[bytes]:
    """The 9 instruction entries: every action einj.ko runs unconditionally, plus BEGIN/END."""
    return [
        _doorbell("begin", BEGIN),
        _read("get_trigger", base + TRIGGER_PTR, (1 << 64) - 1),
        _entry("set_type", WRITE_REGISTER, _gas(SYSTEM_MEMORY, 32, base + SET_TYPE), 0, 0xFFFFFFFF),
        _read("get_type", base + ERROR_TYPES, 0xFFFFFFFF),
        _doorbell("end", END),
        _doorbell("execute", EXECUTE),
        _read("check_busy", base + BUSY, 0x1),
        _read("get_status", base + STATUS, 0xFF),
        # never run by the kernel: its register address is where the parameter block goes
        _entry("set_type_with_address", WRITE_REGISTER, _gas(SYSTEM_MEMORY, 32, base + PARAMS), 0, 0xFFFFFFFF),
    ]


def checksummed(table: bytes) -> bytes:
    """``table`` with byte 9 set so that all its bytes sum to 0 mod 256 (ACPI)."""
    body = bytearray(table)
    body[9] = 0
    body[9] = (-sum(body)) & 0xFF
    return bytes(body)


def table(base: int) -> bytes:
    rows = entries(base)
    length = _HEADER.size + _INJECTION_HEADER.size + 32 * len(rows)
    header = _HEADER.pack(b"EINJ", length, 1, 0, b"VLAB  ", b"VLABEINJ", 1, b"VLAB", 1)
    return checksummed(header + _INJECTION_HEADER.pack(12, 0, len(rows)) + b"".join(rows))


def registers(base: int) -> bytes:
    """The register block's first bytes as the loader writes them at every reset: parameter
    block zero, the offered types, never busy, success, and the trigger table (one TRIGGER
    doorbell write, read only when the request leaves notrigger at 0)."""
    block = bytearray(TRIGGER_TABLE + 16 + 32)
    struct.pack_into("<QQQQ", block, ERROR_TYPES, OFFERED_TYPES, 0, 0, base + TRIGGER_TABLE)
    struct.pack_into("<IIII", block, TRIGGER_TABLE, 16, 1, 16 + 32, 1)
    block[TRIGGER_TABLE + 16:] = _doorbell("trigger", TRIGGER)
    return bytes(block)


def write_files(machine_dir: Path, base: int) -> tuple[Path, Path]:
    """The table and the register blob in ``machine_dir``, named by their content's hash: the
    same spec always yields the same files, and a QEMU never boots a half-written one."""
    written = []
    for kind, data in (("table", table(base)), ("regs", registers(base))):
        path = machine_dir / f"einj-{kind}-{hashlib.sha256(data).hexdigest()[:12]}.bin"
        if not path.exists() or path.read_bytes() != data:
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(data)
            temporary.replace(path)
        written.append(path)
    return written[0], written[1]


def qemu_args(machine_dir: Path, memory_mb: int, initrd: Path) -> list[str]:
    """The QEMU options that give a guest the EINJ table, its registers and the doorbell."""
    base = register_base(memory_mb)
    check_initrd(initrd.stat().st_size)
    table_file, regs_file = write_files(machine_dir, base)
    return ["-acpitable", f"file={table_file}",
            "-device", f"loader,file={regs_file},addr={base:#x},force-raw=on",
            "-chardev", f"socket,id={DOORBELL_CHARDEV},path={doorbell_socket(machine_dir)},server=on,wait=off",
            "-device", f"isa-debugcon,iobase={DOORBELL_PORT:#x},chardev={DOORBELL_CHARDEV}"]


def kernel_args(memory_mb: int) -> list[str]:
    # one argv element for QEMU's -append: the '$' needs no shell escaping
    return [f"memmap={REGION_SIZE // 1024}K${register_base(memory_mb):#x}"]


def doorbell_socket(machine_dir: Path) -> Path:
    return machine_dir / "einj.sock"
