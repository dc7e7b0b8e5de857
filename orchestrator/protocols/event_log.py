"""The BMC's System Event Log (SEL) as a capability: what the platform and the kernel logged.

A real server's BMC keeps what its firmware saw (a memory error it raised: sensor type
Memory, "Uncorrectable ECC") and what the kernel sent it at a panic through its IPMI driver
(an "OS Critical Stop" event plus the panic text in OEM 0xF0 records, 11 characters each,
with ``ipmi_msghandler panic_op=string``). The cycle notes the last record before a case and
keeps the records logged during it as evidence (firmware-fleet-facts.md §6).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

#: record type of the kernel's panic text chunks (ipmi_msghandler.c send_panic_events)
OEM_PANIC_TEXT = 0xF0


@dataclass(frozen=True)
class SelRecord:
    record_id: int
    record_type: int                # 0x02 system event; 0xC0-0xDF OEM timestamped; 0xE0-0xFF OEM
    text: str                       # as `ipmitool sel list` would say it, e.g. "Memory #0x01 | Uncorrectable ECC"
    raw: str                        # the 16 bytes, hex
    timestamp: int | None = None    # BMC clock (seconds since 1970); None for OEM 0xE0-0xFF records
    oem_seq: int | None = None      # 0xF0 panic text: sequence number of the chunk
    oem_text: str = ""              # 0xF0 panic text: the chunk itself

    def to_dict(self) -> dict:
        return {"id": self.record_id, "type": self.record_type, "text": self.text, "raw": self.raw,
                "timestamp": self.timestamp}


def panic_text(records: tuple[SelRecord, ...] | list[SelRecord]) -> str:
    """The kernel's panic text reassembled: its 0xF0 chunks in sequence order. The chunks of
    one panic restart at sequence 0; only the last panic's run is kept."""
    chunks = [r for r in records if r.record_type == OEM_PANIC_TEXT and r.oem_seq is not None]
    starts = [i for i, r in enumerate(chunks) if r.oem_seq == 0]
    if starts:
        chunks = chunks[starts[-1]:]
    return "".join(r.oem_text for r in sorted(chunks, key=lambda r: r.oem_seq))


class EventLogProtocol(abc.ABC):
    """Read a host's SEL. Record ids only grow between clears on the BMCs this supports."""

    @abc.abstractmethod
    def last_record_id(self) -> int | None:
        """The id of the newest record; None for an empty log."""

    @abc.abstractmethod
    def records_after(self, record_id: int | None) -> tuple[SelRecord, ...]:
        """Every record logged after ``record_id`` (all of them for None, or when that
        record is gone: the log was cleared since)."""
