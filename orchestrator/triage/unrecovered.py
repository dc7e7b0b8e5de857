"""The finding of a boot that did not crash but kept running on a page memory_failure() left poisoned.

Bucket ``mf-unrecovered``: with ``vm.panic_on_unrecoverable_memory_failure=0`` the kernel
logs ``recovery action for reserved kernel page: Ignored`` (or Failed, unhandlable ...) and
carries on; the poisoned kernel memory is consumed later (an SEA or machine check minutes
on, the v4 thread's d_lookup), silently corrupts data, or never matters. Such a boot has no
crash to bucket, yet it is the risk the sysctl exists for, so triage reports it: the oldest
unrecovered page (the longest at risk), its label and whether it was injected. A boot that
did crash is bucketed by ``triage.buckets.assemble`` instead, which blames such a page when
the crash consumed it.
"""

from __future__ import annotations

from orchestrator.triage.boot import BootRecord
from orchestrator.triage.buckets import Crash, evidence_lines, fingerprint

BUCKET = "mf-unrecovered"


def unrecovered_boot(boot: BootRecord, *, source: str, index: int) -> Crash | None:
    """The finding for a boot without a crash whose log shows an unrecovered memory failure."""
    if boot.crash is not None or boot.crash_kernel:
        return None
    incident = next((i for i in boot.incidents.values() if i.unrecovered), None)
    if incident is None:
        return None
    origin = "injected" if incident.pfn in boot.injected else "hardware"
    fp, signature = fingerprint([BUCKET, incident.label or "unhandlable page", origin])
    evidence = evidence_lines([boot.injected.get(incident.pfn)], boot.incident_lines(incident))
    return Crash(source=source, boot=index, bucket=BUCKET, fingerprint=fp, signature=signature, panic=None,
                 evidence=evidence, pfn=incident.pfn, crash_kernel=False, ts=incident.ts)
