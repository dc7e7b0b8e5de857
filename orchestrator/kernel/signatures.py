"""Kernel log line parsing: one line in, one ``KernelEvent`` (or None) out.

Used by the per-case verifier (console stream, kdump dmesg) and by triage. Pure code over
text. Formats come from mm/memory-failure.c (pr_fmt "Memory failure: "), panic(), the
x86 MCE and APEI GHES printers and the arm64/x86 die() paths (see
../shared/reference/kernel-facts.md §2, §4, §7 and the lab captures).

Matching is by substring, never by line start: console lines may carry a shell prompt and
an escape sequence before the kernel text (``/ # ESC[6n[    8.802561] Injecting ...``).
Cleaning a line and splitting off its prefix (stamps, syslog levels, journal headers) is
logline.py's part; this module recognises what the body says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from orchestrator.kernel.logline import clean_line, split_prefix

PANIC_KINDS = ("panic_mf", "panic_legacy", "panic_other")

#: Any panic banner, including the closing ``---[ end Kernel panic ...`` line.
PANIC_LINE = re.compile(r"Kernel panic - not syncing: (?P<message>.*?)\s*$")
#: Any memory-failure.c line that names a pfn (``%#lx`` prints 0 as ``0``, not ``0x0``).
MF_LINE = re.compile(r"Memory failure: (?P<pfn>0x[0-9a-fA-F]+|0): (?P<rest>.*?)\s*$")


@dataclass(frozen=True)
class KernelEvent:
    kind: str
    text: str
    pfn: int | None = None          # in units of the kernel's page size, as printed
    label: str | None = None
    result: str | None = None
    message: str | None = None
    ts: float | None = None
    address: int | None = None


# --- body patterns ----------------------------------------------------------------------

_PANIC_MF = re.compile(r"^Memory failure: (0x[0-9a-fA-F]+|0): unrecoverable page")
_PANIC_LEGACY = re.compile(r"^Memory failure on page ([0-9a-fA-F]+)\b")
_PANIC_END = re.compile(r"---\[ end Kernel panic - not syncing: (?P<message>.*?)\s*\]---")
_INJECT = re.compile(r"Injecting memory failure (?:at|for) pfn (0x[0-9a-fA-F]+|0)")
_PHYS_ADDR = re.compile(r"physical_address: (0x[0-9a-fA-F]+)")
_MCE_ADDR = re.compile(r"\bADDR ([0-9a-fA-F]+)\b")
_USER_ACCESS = re.compile(r"hardware memory error in user-access at ([0-9a-fA-F]+)")
_EDAC_PAGE = re.compile(r"page:(0x[0-9a-fA-F]+) offset:(0x[0-9a-fA-F]+)")
_FAULT_ADDR = re.compile(r"(?:address: |at virtual address )([0-9a-fA-F]{8,16})\b")
_FRAME = re.compile(r"^(\?\s+)?([A-Za-z_$][\w$.]*)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+")
# A frame anywhere in a raw line, after whatever prefix: the fast path for trace lines.
_FRAME_IN_LINE = re.compile(r"(?:^|[\s\]])(\?\s+)?([A-Za-z_$][\w$.]*)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+")
_CRASH_SITE = re.compile(r"^(?:pc : |RIP: [0-9a-f]{4}:)([A-Za-z_$][\w$.]*)\+0x")
_GHES_RECORD = re.compile(r"^\{\d+\}")
_OOPS_MARKERS = ("Internal error: ", "Oops: ", "kernel BUG at ", "Unable to handle kernel ",
                 "SError Interrupt on CPU")
# BUG: lines that precede a die(); other BUG: reports (soft lockup, bad page state,
# sleeping in atomic...) do not kill the kernel by themselves and become kind "bug".
_FATAL_BUGS = ("BUG: kernel NULL pointer dereference", "BUG: unable to handle", "BUG: Unable to handle")


def function_name(symbol: str) -> str:
    """``simple_attr_write_xsigned.isra.0`` -> ``simple_attr_write_xsigned``.

    C identifiers have no dots, so anything after the first one is a compiler clone suffix
    (.cold, .isra.N, .constprop.N, .llvm.<hash>) that changes between builds of one kernel.
    """
    return symbol.split(".", 1)[0]


def frame_function(raw: str) -> str | None:
    """The function of a call-trace frame line; "" for an unreliable ``? func`` frame,
    None when the line is no plain frame (``RIP: 0010:func+0x..``, ``<TASK>`` ...)."""
    m = _FRAME_IN_LINE.search(raw)
    if m is None or raw[:m.start()].rstrip().endswith(":"):
        return None
    return "" if m[1] else function_name(m[2])


def _hex(text: str) -> int:
    return int(text, 16)


def _parse_panic(line: str, ts: float | None, body: str) -> KernelEvent:
    end = _PANIC_END.search(body)
    if end:
        return KernelEvent("panic_end", line, message=end["message"], ts=ts)
    message = body.split("Kernel panic - not syncing: ", 1)[1].strip()
    if m := _PANIC_MF.match(message):
        return KernelEvent("panic_mf", line, pfn=_hex(m[1]), message=message, ts=ts)
    if m := _PANIC_LEGACY.match(message):
        return KernelEvent("panic_legacy", line, pfn=_hex(m[1]), message=message, ts=ts)
    return KernelEvent("panic_other", line, message=message, ts=ts)


def _parse_memory_failure(line: str, ts: float | None, body: str) -> KernelEvent | None:
    m = MF_LINE.search(body)
    if not m:
        return KernelEvent("mf_other", line, message=body.split("Memory failure: ", 1)[1], ts=ts)
    pfn, rest = _hex(m["pfn"]), m["rest"]
    if rest.startswith("recovery action for "):
        label, _, result = rest[len("recovery action for "):].rpartition(": ")
        kind = "already_poisoned" if label.startswith("already poisoned") else "action"
        return KernelEvent(kind, line, pfn=pfn, label=label or None, result=result or None, ts=ts)
    if rest.startswith("unhandlable page"):
        return KernelEvent("unhandlable", line, pfn=pfn, ts=ts)
    if rest.startswith("already hardware poisoned"):  # pre-2025 kernels
        return KernelEvent("already_poisoned", line, pfn=pfn, label="already hardware poisoned", ts=ts)
    return KernelEvent("mf_other", line, pfn=pfn, message=rest, ts=ts)


def _parse_hardware_error(line: str, ts: float | None, body: str) -> KernelEvent:
    detail = _GHES_RECORD.sub("", body.split("[Hardware Error]:", 1)[1].strip()).strip()
    if detail.startswith("Machine check: "):
        return KernelEvent("mce_panic", line, message=detail[len("Machine check: "):], ts=ts)
    # No pfn here: the page size is unknown (64K-page arm64 hosts exist, see the v4 thread).
    m = _PHYS_ADDR.search(detail) or _MCE_ADDR.search(detail)
    return KernelEvent("hw_error", line, label=detail, ts=ts, address=_hex(m[1]) if m else None)


def _parse_oops(line: str, ts: float | None, body: str) -> KernelEvent | None:
    if body.startswith("BUG: ") and not body.startswith(_FATAL_BUGS):
        return KernelEvent("bug", line, message=body, ts=ts)
    # A user-space "traps: x[1] general protection fault ip:..." is no kernel crash; the
    # kernel's own GP fault carries the die counter "[#1]".
    kernel_gp = "general protection fault" in body and "[#" in body
    if not (kernel_gp or body.startswith(_FATAL_BUGS) or any(m in body for m in _OOPS_MARKERS)):
        return None
    m = _FAULT_ADDR.search(body)
    return KernelEvent("oops", line, message=body, ts=ts, address=_hex(m[1]) if m else None)


def parse_line(line: str) -> KernelEvent | None:
    """The event on one log line, or None for a line that matters to no one."""
    line = clean_line(line)
    if not line:
        return None
    ts, body = split_prefix(line)
    if "Kernel panic - not syncing: " in body:
        return _parse_panic(line, ts, body)
    if "Memory failure: " in body:
        return _parse_memory_failure(line, ts, body)
    if m := _FRAME.match(body):
        if m[1]:  # "? func+0x..": an unreliable x86 frame, stale data on the stack
            return None
        return KernelEvent("frame", line, label=function_name(m[2]), ts=ts)
    if m := _INJECT.search(body):
        return KernelEvent("inject", line, pfn=_hex(m[1]), ts=ts)
    if "[Hardware Error]:" in body:
        return _parse_hardware_error(line, ts, body)
    if m := _CRASH_SITE.match(body):
        return KernelEvent("pc" if body.startswith("pc") else "rip", line, label=function_name(m[1]), ts=ts)
    if body.startswith(("Call Trace:", "Call trace:")):
        return KernelEvent("call_trace", line, ts=ts)
    if "Starting crashdump kernel" in body:
        return KernelEvent("crash_kernel", line, ts=ts)
    if body.startswith("Linux version "):
        return KernelEvent("linux_version", line, label=body.split()[2] if len(body.split()) > 2 else None, ts=ts)
    if "elfcorehdr" in body:  # x86 crash cmdline "elfcorehdr=..K", arm64 "... for elfcorehdr"
        return KernelEvent("crash_boot", line, ts=ts)
    if "GHES: Fatal hardware error" in body:
        return KernelEvent("ghes_fatal", line, message=body, ts=ts)
    if m := _USER_ACCESS.search(body):
        return KernelEvent("hw_error", line, label=body, ts=ts, address=_hex(m[1]))
    if body.startswith("EDAC MC") and " UE " in body and (m := _EDAC_PAGE.search(body)):
        # page: is in the kernel's page units; the offset tells a lower bound of the page size
        # (0x5080 on the v4 thread's 64K-page host), so the address is exact whenever it says.
        page, offset = _hex(m[1]), _hex(m[2])
        shift = next(s for s in (12, 14, 16, 21) if offset < 1 << s)
        return KernelEvent("hw_error", line, label=body, ts=ts, pfn=page, address=(page << shift) + offset)
    if "sysrq: " in body:
        return KernelEvent("sysrq", line, message=body.split("sysrq: ", 1)[1], ts=ts)
    return _parse_oops(line, ts, body)


def parse_text(text: str) -> list[KernelEvent]:
    """Every event of a whole log text, in order (no pre-filter: for small texts)."""
    return [e for e in map(parse_line, text.splitlines()) if e is not None]


def find_panic(events: Iterable[KernelEvent]) -> KernelEvent | None:
    """The first panic_mf / panic_legacy / panic_other event."""
    return next((e for e in events if e.kind in PANIC_KINDS), None)


def split_boots(events_or_lines: Iterable[KernelEvent | str]) -> list[list[KernelEvent]]:
    """Events grouped by boot.

    A boot ends after ``Starting crashdump kernel...`` (what follows is the crash kernel,
    which may re-log the old MCE at boot: not a new event) and before a ``Linux version``
    banner, unless that banner opens a boot that has no events yet.
    """
    boots: list[list[KernelEvent]] = [[]]
    for item in events_or_lines:
        event = parse_line(item) if isinstance(item, str) else item
        if event is None:
            continue
        if event.kind == "linux_version" and boots[-1]:
            boots.append([])
        boots[-1].append(event)
        if event.kind == "crash_kernel":
            boots.append([])
    if len(boots) > 1 and not boots[-1]:
        boots.pop()
    return boots
