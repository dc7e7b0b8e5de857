"""Turning what a cycle produced (or why no cycle ran) into the frozen ``CaseResult``, and
the cycle's whole product (result and artifacts) into a ``CaseRun``."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from orchestrator.config.playbook import Case, Expectation
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.record import CaseRecord
from orchestrator.cycle.steps import CaseRun, Trail, Verdict
from orchestrator.results.model import CaseResult


def expect_dict(expect: Expectation) -> dict:
    out = {"outcome": expect.outcome, "action_label": expect.action_label, "action_result": expect.action_result,
           "signature": expect.signature, "dump": expect.dump}
    return {**out, "sel": list(expect.sel)} if expect.sel else out


def case_run(h: HostHandles, case: Case, trail: Trail, record: CaseRecord, verdict: Verdict) -> CaseRun:
    """The result, and the console lines since the injection (all of them when no injection
    was fired) read now, after restore, so that they include the case's last words."""
    injected = trail.injected
    console = tuple(h.console.lines(injected.console_mark if injected else 0)) if h.console is not None else None
    dump = trail.collected.dump if trail.collected else None
    return CaseRun(result=build_case_result(h.host.name, case, trail, record, verdict),
                   console=console, console_t0=injected.t if injected else record.started,
                   dump_dmesg=dump.dmesg if dump else None,
                   panic=trail.observed.panic if trail.observed else None, started=record.started)


def build_case_result(host: str, case: Case, trail: Trail, record: CaseRecord, verdict: Verdict) -> CaseResult:
    pre, target = trail.preflight, trail.targeted.target if trail.targeted else None
    dump = trail.collected.dump if trail.collected else None
    panic, injected = trail.observed.panic if trail.observed else None, trail.injected
    after = trail.back.after if trail.back else None
    return CaseResult(
        host=host, case=case.name, verdict=verdict.verdict, reasons=tuple(str(r) for r in verdict.reasons if r),
        blame=verdict.blame, left_armed=verdict.left_armed_,
        expect=expect_dict(pre.expect if pre and pre.expect else case.expect),
        pfn=target.pfn if target else None, page_class=target.page_class if target else case.target,
        injector=case.injector, timings=tuple(record.timings), evidence=tuple(record.evidence),
        panic_after_inject_s=round(panic.t - injected.t, 3) if panic and injected else None,
        dump=dump_summary(dump), boot_id_before=pre.before.boot_id if pre else None,
        boot_id_after=after.boot_id if after else None, recovery=tuple(record.recovery),
        started_at=record.started_at, seconds=round(time.monotonic() - record.started, 3),
    )


def no_cycle_result(host: str, case: Case, verdict: str, reason: str, blame: str | None = None) -> CaseResult:
    """A case that never started a cycle: skipped by its limits, or its host failed preflight."""
    return CaseResult(host=host, case=case.name, verdict=verdict, reasons=(reason,), expect=expect_dict(case.expect),
                      blame=blame,
                      page_class=case.target, injector=case.injector,
                      started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def dump_summary(dump) -> dict | None:
    if dump is None:
        return None
    return {"id": dump.dump_id, "path": dump.path, "files": dict(dump.files), "incomplete": dump.incomplete,
            "vmcoreinfo": dict(dump.vmcoreinfo), "notes": list(dump.notes)}
