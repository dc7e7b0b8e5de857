"""Turning what a cycle learned (or why no cycle ran) into the frozen ``CaseResult``."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from orchestrator.config.playbook import Case, Expectation
from orchestrator.results.model import CaseResult


def expect_dict(expect: Expectation) -> dict:
    return {"outcome": expect.outcome, "action_label": expect.action_label, "action_result": expect.action_result,
            "signature": expect.signature, "dump": expect.dump}


def build_case_result(host: str, case: Case, ctx, verdict: str, reasons: list[str], started_at: str) -> CaseResult:
    target, dump = ctx.target, ctx.dump
    return CaseResult(
        host=host, case=case.name, verdict=verdict, reasons=tuple(r for r in reasons if r),
        expect=expect_dict(ctx.expect or case.expect),
        pfn=target.pfn if target else None, page_class=target.page_class if target else case.target,
        injector=case.injector, timings=tuple(ctx.timings), evidence=tuple(ctx.evidence),
        panic_after_inject_s=round(ctx.panic_t - ctx.inject_t, 3) if ctx.panic_t and ctx.inject_t else None,
        dump=dump_summary(dump), boot_id_before=ctx.before.boot_id if ctx.before else None,
        boot_id_after=ctx.after.boot_id if ctx.after else None, recovery=tuple(ctx.recovery),
        started_at=started_at, seconds=round(time.monotonic() - ctx.started, 3),
    )


def no_cycle_result(host: str, case: Case, verdict: str, reason: str) -> CaseResult:
    """A case that never started a cycle: skipped by its limits, or its host failed preflight."""
    return CaseResult(host=host, case=case.name, verdict=verdict, reasons=(reason,), expect=expect_dict(case.expect),
                      page_class=case.target, injector=case.injector,
                      started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def dump_summary(dump) -> dict | None:
    if dump is None:
        return None
    return {"id": dump.dump_id, "path": dump.path, "files": dict(dump.files), "incomplete": dump.incomplete,
            "vmcoreinfo": dict(dump.vmcoreinfo), "notes": list(dump.notes)}
