"""The BMC's System Event Log over IPMI (``EventLogProtocol``): IPMI 2.0 storage commands.

Records are 16 bytes (IPMI 2.0 §32): id (2, LE), type, then for a system event (0x02) a
timestamp (4), generator (2), EvM revision, sensor type, sensor number, event dir|type and
three event data bytes; OEM 0xC0-0xDF: timestamp, manufacturer (3), 6 OEM bytes; OEM
0xE0-0xFF: 13 OEM bytes. The kernel's panic text comes in 0xF0 records: slave address,
sequence number, 11 characters. The lab BMC (vlab/bmc/sel.py) shares these definitions.
"""

from __future__ import annotations

import struct

from orchestrator.errors import FatalInfraError
from orchestrator.protocols.event_log import OEM_PANIC_TEXT, EventLogProtocol, SelRecord
from orchestrator.transports.ipmi import IpmiPower

NETFN_SENSOR_EVENT, CMD_PLATFORM_EVENT = 0x04, 0x02
NETFN_STORAGE = 0x0A
CMD_GET_SEL_INFO, CMD_RESERVE_SEL, CMD_GET_SEL_ENTRY, CMD_ADD_SEL_ENTRY = 0x40, 0x42, 0x43, 0x44
CMD_CLEAR_SEL, CMD_GET_SEL_TIME = 0x47, 0x48
FIRST_RECORD, LAST_RECORD = 0x0000, 0xFFFF
CC_NOT_PRESENT = 0xCB           # "requested sensor, data, or record not present"
SYSTEM_EVENT = 0x02
RECORD_SIZE = 16
SENSOR_MEMORY, SENSOR_OS_CRITICAL_STOP = 0x0C, 0x20
#: sensor-specific (event type 0x6F) offsets we name, per sensor type (IPMI 2.0 table 42-3)
EVENTS = {SENSOR_MEMORY: {0: "Correctable ECC", 1: "Uncorrectable ECC", 5: "Correctable ECC logging limit reached"},
          SENSOR_OS_CRITICAL_STOP: {0: "Critical stop during OS load", 1: "Run-time critical stop"}}
SENSOR_NAMES = {SENSOR_MEMORY: "Memory", SENSOR_OS_CRITICAL_STOP: "OS Critical Stop"}
#: a case's SEL read walks at most this many records (a BMC that loops on "next" must not hang it)
MAX_RECORDS_PER_READ = 512


def describe(raw: bytes) -> SelRecord:
    """One 16-byte SEL record, decoded as `ipmitool sel list` shows it."""
    record_id, record_type = struct.unpack_from("<HB", raw)
    if record_type == SYSTEM_EVENT:
        timestamp = struct.unpack_from("<I", raw, 3)[0]
        sensor_type, number, event_type, data1 = raw[10], raw[11], raw[12] & 0x7F, raw[13]
        name = SENSOR_NAMES.get(sensor_type, f"Sensor type {sensor_type:#04x}")
        event = EVENTS.get(sensor_type, {}).get(data1 & 0x0F) if event_type == 0x6F else None
        state = "Deasserted" if raw[12] & 0x80 else "Asserted"
        text = f"{name} #{number:#04x} | {event or f'event {event_type:#04x}/{data1:#04x}'} | {state}"
        return SelRecord(record_id, record_type, text, raw.hex(), timestamp)
    if 0xC0 <= record_type <= 0xDF:
        timestamp = struct.unpack_from("<I", raw, 3)[0]
        return SelRecord(record_id, record_type, f"OEM record {record_type:#04x} | {raw[10:].hex()}", raw.hex(),
                         timestamp)
    if record_type == OEM_PANIC_TEXT:
        chunk = raw[5:].split(b"\0", 1)[0].decode("ascii", "replace")
        return SelRecord(record_id, record_type, f"Linux kernel panic: {chunk}", raw.hex(),
                         oem_seq=raw[4], oem_text=chunk)
    return SelRecord(record_id, record_type, f"OEM record {record_type:#04x} | {raw[3:].hex()}", raw.hex())


def get_entry_request(record_id: int) -> bytes:
    """Get SEL Entry without a reservation (0), whole record (offset 0, 0xFF bytes)."""
    return struct.pack("<HHBB", 0, record_id, 0, 0xFF)


class IpmiEventLog(EventLogProtocol):
    def __init__(self, power: IpmiPower):
        self._power = power      # shares the host's BMC session and its serialization

    def _entry(self, record_id: int) -> tuple[int, bytes] | None:
        """(next record id, record bytes), None when the record is not there."""
        code, data = self._power.raw(f"read SEL record {record_id:#06x}", NETFN_STORAGE, CMD_GET_SEL_ENTRY,
                                     get_entry_request(record_id))
        if code == CC_NOT_PRESENT:
            return None
        if code or len(data) < 2 + RECORD_SIZE:
            raise FatalInfraError(f"read SEL record {record_id:#06x}: completion code {code:#x}, "
                                  f"{len(data)} bytes")
        return struct.unpack_from("<H", data)[0], data[2:2 + RECORD_SIZE]

    def last_record_id(self) -> int | None:
        entry = self._entry(LAST_RECORD)
        return None if entry is None else struct.unpack_from("<H", entry[1])[0]

    def records_after(self, record_id: int | None) -> tuple[SelRecord, ...]:
        start = self._entry(record_id) if record_id is not None else None
        next_id = start[0] if start is not None else FIRST_RECORD
        records: list[SelRecord] = []
        while next_id != LAST_RECORD and len(records) < MAX_RECORDS_PER_READ:
            entry = self._entry(next_id)
            if entry is None:
                break
            next_id = entry[0]
            records.append(describe(entry[1]))
        return tuple(records)
