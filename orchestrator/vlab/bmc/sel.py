"""The lab BMC's System Event Log: records kept in ``sel.json`` in the machine dir.

A real BMC's SEL lives in its own flash: it survives the host's reboots and the BMC's own
restarts, so this one is a file, rewritten whole on every change (a few records per case).
Who writes into it, as on a real server:

- the platform firmware, for each memory error it raised (``platform_errors.LISTENERS``):
  a Memory (0x0C) "Uncorrectable ECC" event (offset 0 "Correctable ECC" for corrected
  errors) and an OEM 0xC0 record with the physical address (6 bytes, little endian);
- the guest kernel at a panic, in band through the KCS interface (kcs_link.py): Platform
  Event "OS Critical Stop" and the panic text as OEM 0xF0 records;
- any IPMI client (Add SEL Entry). The IPMI commands are in sel_commands.py.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from pathlib import Path

from orchestrator.transports.ipmi_sel import LAST_RECORD, RECORD_SIZE, SENSOR_MEMORY, SYSTEM_EVENT
from orchestrator.vlab.qemu import platform_errors

SEL_FILE = "sel.json"
#: a real BMC holds a few hundred to a few thousand records; the oldest go when it is full
CAPACITY = 1024
GENERATOR_BIOS = 0x0001         # system software id 0x00: the BIOS/firmware (IPMI 2.0 §5.5)
MEMORY_SENSOR_NUMBER = 0x01
LAB_MANUFACTURER = b"\0\0\0"    # the lab's OEM records carry no IANA number


def _timestamped(record_type: int) -> bool:
    return record_type == SYSTEM_EVENT or 0xC0 <= record_type <= 0xDF


class SelLog:
    """Records in order of addition; ids count up from 1 and are never reused before a clear."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        state = json.loads(path.read_text()) if path.exists() else {}
        self._records: list[bytes] = [bytes.fromhex(r) for r in state.get("records", [])]
        self._next_id: int = state.get("next_id", 1)
        self.last_add: int = state.get("last_add", 0)
        self.last_erase: int = state.get("last_erase", 0)
        self.overflowed: bool = state.get("overflowed", False)

    def add(self, record: bytes) -> int:
        """Store a 16-byte record under a new id (and the BMC's time where the type has one)."""
        if len(record) != RECORD_SIZE:
            raise ValueError(f"a SEL record is {RECORD_SIZE} bytes, not {len(record)}")
        with self._lock:
            record_id = self._next_id
            self._next_id = record_id + 1 if record_id + 1 < LAST_RECORD else 1
            now = int(time.time())
            stamped = bytearray(struct.pack("<H", record_id) + record[2:])
            if _timestamped(record[2]):
                struct.pack_into("<I", stamped, 3, now)
            self._records.append(bytes(stamped))
            if len(self._records) > CAPACITY:
                del self._records[0]
                self.overflowed = True
            self.last_add = now
            self._save()
            return record_id

    def entry(self, record_id: int) -> tuple[int, bytes] | None:
        """(next record id or 0xFFFF, record) for an id, 0 (first) or 0xFFFF (last)."""
        with self._lock:
            if not self._records:
                return None
            if record_id == 0:
                index = 0
            elif record_id == LAST_RECORD:
                index = len(self._records) - 1
            else:
                index = next((i for i, r in enumerate(self._records) if r[:2] == struct.pack("<H", record_id)), None)
                if index is None:
                    return None
            following = self._records[index + 1][:2] if index + 1 < len(self._records) else b"\xff\xff"
            return struct.unpack("<H", following)[0], self._records[index]

    def clear(self) -> None:
        with self._lock:
            self._records, self.overflowed = [], False
            self.last_erase = int(time.time())
            self._save()

    def count(self) -> int:
        with self._lock:
            return len(self._records)

    def _save(self) -> None:
        state = {"records": [r.hex() for r in self._records], "next_id": self._next_id,
                 "last_add": self.last_add, "last_erase": self.last_erase, "overflowed": self.overflowed}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, self.path)   # a BMC killed mid-write keeps the previous log


_LOGS: dict[Path, SelLog] = {}
_LOGS_LOCK = threading.Lock()


def log_for(machine_dir: Path) -> SelLog:
    """The SEL of the machine in ``machine_dir`` (one per machine, shared by its writers)."""
    key = Path(machine_dir).resolve()
    with _LOGS_LOCK:
        if key not in _LOGS:
            _LOGS[key] = SelLog(key / SEL_FILE)
        return _LOGS[key]


def system_event(generator: int, sensor_type: int, sensor_number: int, event_type: int,
                 data: bytes, evm_rev: int = 0x04) -> bytes:
    """A system event record (id and timestamp filled in by ``SelLog.add``)."""
    return struct.pack("<HBIHBBBB", 0, SYSTEM_EVENT, 0, generator, evm_rev, sensor_type, sensor_number,
                       event_type) + bytes(data[:3]).ljust(3, b"\xff")


def memory_error_records(phys_addr: int, severity: str) -> tuple[bytes, bytes]:
    """What the firmware logs for a memory error it raised: the Memory event and an OEM
    record holding the address (``ipmitool sel list`` shows it as hex)."""
    offset = 0x00 if severity == "corrected" else 0x01
    event = system_event(GENERATOR_BIOS, SENSOR_MEMORY, MEMORY_SENSOR_NUMBER, 0x6F, bytes([offset, 0xFF, 0xFF]))
    oem = struct.pack("<HBI", 0, 0xC0, 0) + LAB_MANUFACTURER + (phys_addr & (1 << 48) - 1).to_bytes(6, "little")
    return event, oem


def _log_memory_error(spec, phys_addr: int, path: str, severity: str) -> None:
    sel = log_for(spec.machine_dir)
    for record in memory_error_records(phys_addr, severity):
        sel.add(record)


platform_errors.LISTENERS.append(_log_memory_error)
