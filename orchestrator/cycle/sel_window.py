"""The BMC's System Event Log around one case: the last record before the injection, the
records logged from then until the case is judged (evidence), and the playbook's
``expect: {sel: [...]}`` checked against them.

A host without a SEL (no ``sel`` feature, so no ``HostHandles.event_log``) is not read. A
SEL that cannot be read costs the evidence, not the case, unless the case expects records.
"""

from __future__ import annotations

import time

from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.record import CaseRecord
from orchestrator.cycle.steps import SelMark
from orchestrator.cycle.verify import Finding
from orchestrator.errors import FIRMWARE, OrchestratorError
from orchestrator.protocols.event_log import SelRecord, panic_text


def mark(h: HostHandles, record: CaseRecord) -> SelMark | None:
    """The newest record before the injection; None without a SEL or when it cannot be read."""
    if h.event_log is None:
        return None
    try:
        return SelMark(h.event_log.last_record_id())
    except OrchestratorError as exc:
        record.add_evidence("sel", f"SEL not read before the injection: {exc}")
        return None


def read(h: HostHandles, sel_mark: SelMark | None, record: CaseRecord) -> tuple[SelRecord, ...] | None:
    """The records of the case window, kept as evidence (with the kernel's panic text
    reassembled from its chunks); None when there is no SEL to read."""
    if h.event_log is None or sel_mark is None:
        return None
    started = time.monotonic()
    try:
        records = h.event_log.records_after(sel_mark.last_id)
    except OrchestratorError as exc:
        record.add_evidence("sel", f"SEL not read after the case: {exc}")
        return None
    for r in records:
        record.add_evidence("sel", f"{r.record_id:#06x} | {r.text}")
    text = panic_text(records)
    if text:
        record.add_evidence("sel-panic", text)
    record.add_evidence("sel", f"{len(records)} record(s) since {_id(sel_mark.last_id)}, "
                               f"read in {time.monotonic() - started:.3f} s")
    return records


def judge(wanted: tuple[str, ...], records: tuple[SelRecord, ...] | None) -> list[Finding]:
    """A finding per wanted text that no record of the case (nor the reassembled panic
    text) contains, case-insensitively. Missing records are the platform's doing: its BMC
    or firmware did not log what the case needs, which says nothing about the kernel."""
    if not wanted:
        return []
    if records is None:
        return [Finding("SEL: the case expects records but the BMC's event log was not read", FIRMWARE)]
    texts = [r.text.lower() for r in records] + [panic_text(records).lower()]
    missing = [w for w in wanted if not any(w.lower() in t for t in texts)]
    seen = "; ".join(r.text for r in records) or "nothing"
    return [Finding(f"SEL: no record matching {w!r} in the case window (logged: {seen})", FIRMWARE)
            for w in missing]


def _id(record_id: int | None) -> str:
    return "an empty log" if record_id is None else f"record {record_id:#06x}"
