"""Bucket rules and stable fingerprints for the crash of one boot.

Buckets, first match wins:

1. ``mf-fail-fast``   the new panic ``Memory failure: 0x<pfn>: unrecoverable page``.
2. ``mf-legacy``      ``Memory failure on page <hex>`` (vm.memory_failure_recovery=0).
3. ``hw-error-consumed-later``  an oops / SEA / machine check after an earlier memory
   failure that was not recovered (Ignored, Failed, unhandlable, already poisoned) or an
   earlier hardware-error report with an address. When the crash's own report names an
   address, it must fall in that page, else the earlier error is a coincidence.
4. ``firmware-fatal`` the hardware itself stopped the kernel: MCE panic, GHES fatal,
   synchronous external abort or SError with no earlier error to blame.
5. ``software``       anything else.

A fingerprint groups the same bug across hosts and boots, so it leaves out what differs
between them: timestamps, pids, CPUs, pfns and addresses (a bad DIMM on another host is
the same bug), die counters, ESR/error codes and compiler clone suffixes. What it keeps:
the bucket, the page class, whether the error was injected (lab) or real, the crash title
and crash site, and for software crashes the top call-trace frames.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from orchestrator.triage.boot import BootRecord, CrashRecord, HwReport, Incident, same_page

TOP_FRAMES = 5                  # frames in a software crash's fingerprint
SHOWN_FRAMES = 8
MAX_EVIDENCE = 8
OWN_REPORT_WINDOW_S = 1.0       # a hardware-error line this close before a crash is its own report
OWN_REPORT_WINDOW_CHARS = 4096  # the same, for logs without timestamps

# Frames every crash of a kind shares: they say how the kernel died, not where.
GENERIC_FRAMES = frozenset("""
dump_stack dump_stack_lvl show_stack show_regs __show_regs show_trace_log_lvl panic vpanic nmi_panic
__warn warn_slowpath_fmt die __die die_body __die_body oops_end arm64_notify_die die_kernel_fault
do_trap do_error_trap handle_bug exc_invalid_op asm_exc_invalid_op exc_page_fault asm_exc_page_fault
page_fault_oops do_user_addr_fault kernelmode_fixup_or_oops __bad_area_nosemaphore bad_area_nosemaphore
exc_general_protection asm_exc_general_protection do_mem_abort el1_abort el1h_64_sync_handler
el1h_64_sync __do_kernel_fault do_sea do_page_fault do_translation_fault bug_handler call_break_hook
brk_handler do_debug_exception el1_dbg arm64_serror_panic do_serror mce_panic do_machine_check
exc_machine_check asm_exc_machine_check noist_exc_machine_check apei_claim_sea ghes_notify_sea
""".split())
INJECTOR_FRAMES = frozenset(("hwpoison_inject", "hard_offline_page_store", "madvise_inject_error"))
HARDWARE_CRASH = re.compile(r"machine check|GHES: Fatal|Fatal hardware error|synchronous external abort|SError",
                            re.IGNORECASE)
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{6,}\b|\b\d+\b")


@dataclass(frozen=True)
class Crash:
    source: str
    boot: int
    bucket: str
    fingerprint: str
    signature: str                      # the text the fingerprint hashes, for humans
    panic: str | None
    evidence: tuple[str, ...]
    pfn: int | None = None
    delay_s: float | None = None        # hw-error-consumed-later: memory-failure line -> crash
    address_in_page: str | None = None  # hw-error-consumed-later: yes | no | unknown
    address: int | None = None          # physical address named by the crash's own report
    frames: tuple[str, ...] = ()
    crash_kernel: bool = False
    ts: float | None = None

    def as_json(self) -> dict:
        return {
            "file": self.source, "boot": self.boot, "bucket": self.bucket,
            "fingerprint": self.fingerprint, "signature": self.signature,
            "pfn": None if self.pfn is None else hex(self.pfn), "panic": self.panic,
            "delay_s": self.delay_s, "address_in_page": self.address_in_page,
            "address": None if self.address is None else hex(self.address),
            "frames": list(self.frames[:SHOWN_FRAMES]), "crash_kernel": self.crash_kernel, "ts": self.ts,
            "evidence": list(self.evidence),
        }


def normalize(text: str) -> str:
    """A message without its run-specific numbers: ``Oops: 0000 [#1] SMP`` -> ``Oops: #``."""
    text = re.sub(r"^\{\d+\}", "", text.split(" [#", 1)[0])
    return " ".join(_NUMBERS.sub("#", text).split())


def fingerprint(parts: list[str]) -> tuple[str, str]:
    signature = " | ".join(parts)
    return hashlib.sha1(signature.encode()).hexdigest()[:12], signature


def significant_frames(crash: CrashRecord) -> tuple[str, ...]:
    frames = [f for f in crash.frames if f not in GENERIC_FRAMES]
    site = crash.site.label if crash.site else None
    if site and (not frames or frames[0] != site):  # x86: RIP's function is not in the trace
        frames.insert(0, site)
    return tuple(f for i, f in enumerate(frames) if i == 0 or f != frames[i - 1])


def _own_addresses(boot: BootRecord, crash: CrashRecord) -> list[int]:
    return [r.address for r in boot.hw_reports
            if not _before_own_report(r.ts, r.offset, crash) and not _handled(boot, r)]


def _handled(boot: BootRecord, report: HwReport) -> bool:
    """memory_failure() took the report's page after it: the report was that incident's, not the
    crash's (whose queued work never runs). Else a recovered page hid an earlier Ignored one."""
    return any(i.offset > report.offset and same_page(report.address, i.pfn) for i in boot.incidents.values())


def _before_own_report(ts: float | None, offset: int, crash: CrashRecord) -> bool:
    if ts is not None and crash.ts is not None:
        return crash.ts - ts >= OWN_REPORT_WINDOW_S
    return crash.offset - offset > OWN_REPORT_WINDOW_CHARS


def _prior_errors(boot: BootRecord, crash: CrashRecord) -> list[Incident | HwReport]:
    """Unrecovered memory failures and unexplained hardware reports before the crash, oldest first."""
    priors: list[Incident | HwReport] = [i for i in boot.incidents.values()
                                         if i.unrecovered and i.offset < crash.offset]
    for report in boot.hw_reports:
        if report.offset >= crash.offset or not _before_own_report(report.ts, report.offset, crash):
            continue
        if not any(same_page(report.address, i.pfn) for i in boot.incidents.values()):
            priors.append(report)
    return sorted(priors, key=lambda p: p.offset)


def _hits_page(prior: Incident | HwReport, address: int) -> bool:
    if isinstance(prior, Incident):
        return same_page(address, prior.pfn)
    return address >> 12 == prior.address >> 12


def _blame(boot: BootRecord, crash: CrashRecord, addresses: list[int]) -> tuple[Incident | HwReport, str] | None:
    priors = _prior_errors(boot, crash)
    if not priors:
        return None
    if not addresses:
        return priors[-1], "unknown"
    hits = [p for p in priors if any(_hits_page(p, a) for a in addresses)]
    return (hits[-1], "yes") if hits else None


def evidence_lines(*groups) -> tuple[str, ...]:
    lines = [line for group in groups for line in group if line]
    return tuple(dict.fromkeys(lines))[:MAX_EVIDENCE]


def _text(*events) -> list[str]:
    return [e.text for e in events if e is not None]


def _origin(boot: BootRecord, crash: CrashRecord, pfn: int) -> str:
    injected = pfn in boot.injected or any(f in INJECTOR_FRAMES for f in crash.frames)
    return "injected" if injected else "hardware"


def assemble(boot: BootRecord, *, source: str, index: int) -> Crash | None:
    """The bucketed crash of one boot, or None if the boot did not crash."""
    crash = boot.crash
    if crash is None:
        return None
    panic = crash.panic
    common = dict(source=source, boot=index, panic=panic.message if panic else None,
                  frames=significant_frames(crash), crash_kernel=boot.crash_kernel, ts=crash.ts)
    if panic is not None and panic.kind in ("panic_mf", "panic_legacy"):
        return _memory_failure_panic(boot, crash, common)
    addresses = _own_addresses(boot, crash)
    consumption = crash.title is not None or _is_hardware_crash(crash)  # not sysrq, hung task, OOM...
    blamed = _blame(boot, crash, addresses) if consumption else None
    if blamed is not None:
        return _consumed_later(boot, crash, addresses, *blamed, common)
    if _is_hardware_crash(crash):
        return _firmware_fatal(boot, crash, addresses, common)
    parts = ["software", _crash_title(crash), *common["frames"][:TOP_FRAMES]]
    evidence = evidence_lines(_text(crash.title, crash.site, panic))
    return Crash(bucket="software", **_fp(parts), evidence=evidence, **common)


def _memory_failure_panic(boot: BootRecord, crash: CrashRecord, common: dict) -> Crash:
    panic = crash.panic
    incident = boot.incidents.get(panic.pfn)
    if panic.kind == "panic_mf":
        label = incident.label if incident and incident.label else "?"
        parts = ["mf-fail-fast", label, _origin(boot, crash, panic.pfn)]
    else:  # the legacy panic comes before any classification: there is no label
        parts = ["mf-legacy", _origin(boot, crash, panic.pfn)]
    evidence = evidence_lines([boot.injected.get(panic.pfn)], incident.lines if incident else [], _text(panic))
    return Crash(bucket=parts[0], **_fp(parts), pfn=panic.pfn, evidence=evidence, **common)


def _consumed_later(boot: BootRecord, crash: CrashRecord, addresses: list[int], prior: Incident | HwReport,
                    in_page: str, common: dict) -> Crash:
    if isinstance(prior, Incident):
        label, pfn = prior.label or "unhandlable page", prior.pfn
        prior_lines = boot.incident_lines(prior)
    else:
        label, pfn, prior_lines = "hardware error report", None, [prior.text]
    delay = None if prior.ts is None or crash.ts is None else round(crash.ts - prior.ts, 3)
    site = crash.site.label if crash.site else (common["frames"] or ("?",))[0]
    parts = ["hw-error-consumed-later", label, _crash_title(crash), site]
    evidence = evidence_lines(prior_lines, _text(crash.title, crash.firmware, crash.site, crash.panic))
    return Crash(bucket=parts[0], **_fp(parts), pfn=pfn, delay_s=delay, address_in_page=in_page,
                 address=addresses[-1] if addresses else None, evidence=evidence, **common)


def _firmware_fatal(boot: BootRecord, crash: CrashRecord, addresses: list[int], common: dict) -> Crash:
    # GHES's own "Fatal hardware error[ but panic disabled]" line depends on kernel.panic,
    # so it names the bug only when the panic line is missing.
    reason = crash.firmware if crash.firmware and crash.firmware.kind == "mce_panic" else None
    named = [crash.title, reason, crash.panic or crash.firmware]
    parts = ["firmware-fatal", *dict.fromkeys(_message(e) for e in named if e is not None)]
    own_reports = [r.text for r in boot.hw_reports if r.address in addresses]
    notes = [text for offset, text in boot.hw_notes if offset >= crash.offset - OWN_REPORT_WINDOW_CHARS]
    evidence = evidence_lines(notes[:2], own_reports[:2], _text(crash.title, crash.firmware, crash.site, crash.panic))
    return Crash(bucket=parts[0], **_fp(parts), address=addresses[-1] if addresses else None,
                 evidence=evidence, **common)


def _fp(parts: list[str]) -> dict:
    fp, signature = fingerprint(parts)
    return {"fingerprint": fp, "signature": signature}


def _message(event) -> str:
    text = event.message or event.text
    return normalize(("Machine check: " + text) if event.kind == "mce_panic" else text)


def _crash_title(crash: CrashRecord) -> str:
    """What killed the kernel: the oops title, else the MCE reason, else the panic message."""
    event = crash.title or crash.firmware or crash.panic
    return _message(event) if event is not None else "?"


def _is_hardware_crash(crash: CrashRecord) -> bool:
    if crash.firmware is not None:
        return True
    texts = [e.message for e in (crash.title, crash.panic) if e is not None and e.message]
    return any(HARDWARE_CRASH.search(t) for t in texts)
