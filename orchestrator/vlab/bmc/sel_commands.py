"""The lab BMC's SEL commands (IPMI 2.0 §31), registered in raw_commands for LAN clients
(``ipmitool sel list``, pyghmi's ``get_event_log``, the orchestrator's IpmiEventLog) and
answered the same way to the guest's KCS interface (kcs_link.py).
"""

from __future__ import annotations

import itertools
import struct
import time

from orchestrator.transports.ipmi_sel import (CC_NOT_PRESENT, CMD_ADD_SEL_ENTRY, CMD_CLEAR_SEL, CMD_GET_SEL_ENTRY,
                                              CMD_GET_SEL_INFO, CMD_GET_SEL_TIME, CMD_PLATFORM_EVENT,
                                              CMD_RESERVE_SEL, NETFN_SENSOR_EVENT, NETFN_STORAGE, RECORD_SIZE)
from orchestrator.vlab.bmc import sel
from orchestrator.vlab.bmc.raw_commands import register

CMD_SET_SEL_TIME = 0x49
CC_OK, CC_LENGTH, CC_INVALID_DATA = 0x00, 0xC7, 0xCC
SEL_VERSION = 0x51                  # IPMI 1.5/2.0 SEL
OP_SUPPORT_RESERVE, OP_OVERFLOW = 0x02, 0x80
GENERATOR_BMC = 0x20                # a Platform Event from a session names no generator
_reservations = itertools.count(1)


def _log(bmc) -> sel.SelLog:
    return sel.log_for(bmc.config.machine_dir)


@register(NETFN_STORAGE, CMD_GET_SEL_INFO)
def get_sel_info(bmc, data: bytes) -> tuple[int, bytes]:
    log = _log(bmc)
    count = log.count()
    free = min(0xFFFF, (sel.CAPACITY - count) * RECORD_SIZE)
    ops = OP_SUPPORT_RESERVE | (OP_OVERFLOW if log.overflowed else 0)
    return CC_OK, struct.pack("<BHHIIB", SEL_VERSION, count, free, log.last_add, log.last_erase, ops)


@register(NETFN_STORAGE, CMD_RESERVE_SEL)
def reserve_sel(bmc, data: bytes) -> tuple[int, bytes]:
    # Reservations are granted and never cancelled: records are only appended or all cleared
    return CC_OK, struct.pack("<H", next(_reservations) & 0xFFFF or 1)


@register(NETFN_STORAGE, CMD_GET_SEL_ENTRY)
def get_sel_entry(bmc, data: bytes) -> tuple[int, bytes]:
    if len(data) != 6:
        return CC_LENGTH, b""
    _, record_id, offset, length = struct.unpack("<HHBB", data)
    found = _log(bmc).entry(record_id)
    if found is None:
        return CC_NOT_PRESENT, b""
    next_id, record = found
    part = record[offset:] if length == 0xFF else record[offset:offset + length]
    return CC_OK, struct.pack("<H", next_id) + part


@register(NETFN_STORAGE, CMD_ADD_SEL_ENTRY)
def add_sel_entry(bmc, data: bytes) -> tuple[int, bytes]:
    if len(data) != RECORD_SIZE:
        return CC_LENGTH, b""
    return CC_OK, struct.pack("<H", _log(bmc).add(data))


@register(NETFN_STORAGE, CMD_CLEAR_SEL)
def clear_sel(bmc, data: bytes) -> tuple[int, bytes]:
    if len(data) != 6 or data[2:5] != b"CLR":
        return CC_INVALID_DATA, b""
    if data[5] == 0xAA:
        _log(bmc).clear()
    return CC_OK, b"\x01"           # erasure completed


@register(NETFN_STORAGE, CMD_GET_SEL_TIME)
def get_sel_time(bmc, data: bytes) -> tuple[int, bytes]:
    return CC_OK, struct.pack("<I", int(time.time()))


@register(NETFN_STORAGE, CMD_SET_SEL_TIME)
def set_sel_time(bmc, data: bytes) -> tuple[int, bytes]:
    return CC_OK, b""               # the lab's clock is the host's: accepted, not applied


@register(NETFN_SENSOR_EVENT, CMD_PLATFORM_EVENT)
def platform_event(bmc, data: bytes) -> tuple[int, bytes]:
    """From the system interface the request starts with its generator id (the kernel:
    0x41); from a session it does not. EvMRev, sensor type, number, event type, data."""
    if len(data) == 7:
        data = bytes([GENERATOR_BMC]) + data
    if len(data) != 8:
        return CC_LENGTH, b""
    generator, rev, sensor_type, number, event_type = data[:5]
    _log(bmc).add(sel.system_event(generator, sensor_type, number, event_type, data[5:], evm_rev=rev))
    return CC_OK, b""
