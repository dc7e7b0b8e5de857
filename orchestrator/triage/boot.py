"""What one boot's log said, gathered event by event in bounded memory.

``BootRecord.feed`` takes the events of one boot in log order. It keeps what triage needs
to decide a bucket later (``triage.buckets.assemble``): the memory-failure incidents per
pfn, the recent hardware-error reports, and the first crash of the boot with its title,
crash site, frames and panic. One crash per boot: once a kernel has oopsed or panicked,
later reports in that boot are fallout of the first one.
"""

from __future__ import annotations

from collections import deque

from orchestrator.kernel.signatures import KernelEvent

MAX_INCIDENTS = 64        # distinct pfns remembered per boot (oldest forgotten first)
MAX_INCIDENT_LINES = 3
MAX_HW_REPORTS = 64
MAX_FRAMES = 16          # enough for the generic frames plus the top frames a fingerprint uses
MAX_INJECTED = 256
PAGE_SHIFTS = (12, 14, 16)  # 4K, 16K, 64K: the log never says which one the host used

# Results after which the page is no longer in use by anyone: it cannot be consumed later.
SETTLED_RESULTS = ("Recovered", "Delayed")
# mf_other lines that still leave a poisoned page in place.
UNSETTLED_NOTES = ("memory outside kernel control", "Unknown page state")


def same_page(address: int, pfn: int) -> bool:
    return any(address >> shift == pfn for shift in PAGE_SHIFTS)


class Incident:
    """A memory-failure report for one pfn: its first line, label, result, lines."""

    __slots__ = ("pfn", "ts", "offset", "label", "result", "unrecovered", "lines")

    def __init__(self, pfn: int, event: KernelEvent, offset: int):
        self.pfn, self.ts, self.offset = pfn, event.ts, offset
        self.label: str | None = None
        self.result: str | None = None
        self.unrecovered = False
        self.lines: list[str] = []

    def update(self, event: KernelEvent) -> None:
        if len(self.lines) < MAX_INCIDENT_LINES:
            self.lines.append(event.text)
        if event.kind in ("action", "already_poisoned"):
            self.label, self.result = event.label, event.result
            self.unrecovered = event.result not in SETTLED_RESULTS
        elif event.kind == "unhandlable":
            self.unrecovered = True
        elif event.message and event.message.startswith(UNSETTLED_NOTES):
            self.unrecovered = True


class HwReport:
    """A hardware-error line that names a physical address (GHES, MCE ADDR, EDAC)."""

    __slots__ = ("ts", "offset", "address", "text")

    def __init__(self, event: KernelEvent, offset: int):
        self.ts, self.offset, self.address, self.text = event.ts, offset, event.address, event.text


class CrashRecord:
    """The first crash of a boot: where it started and what it printed."""

    def __init__(self, event: KernelEvent, offset: int):
        self.ts, self.offset = event.ts, offset
        self.title: KernelEvent | None = None        # first oops line
        self.site: KernelEvent | None = None         # pc : / RIP: line
        self.panic: KernelEvent | None = None
        self.firmware: KernelEvent | None = None     # mce_panic / ghes_fatal line
        self.frames: list[str] = []
        self.collecting = False


class BootRecord:
    def __init__(self, *, crash_kernel: bool = False):
        self.crash_kernel = crash_kernel
        self.events = 0
        self.incidents: dict[int, Incident] = {}
        self.hw_reports: deque[HwReport] = deque(maxlen=MAX_HW_REPORTS)
        self.hw_notes: deque[tuple[int, str]] = deque(maxlen=8)   # addressless [Hardware Error] lines
        self.injected: dict[int, str] = {}
        self.crash: CrashRecord | None = None

    def incident_lines(self, incident: Incident) -> list[str]:
        """The first hardware report of the incident's page, then the incident's own lines."""
        return [r.text for r in self.hw_reports if same_page(r.address, incident.pfn)][:1] + incident.lines

    @property
    def wants_frames(self) -> bool:
        crash = self.crash
        return crash is not None and crash.collecting and len(crash.frames) < MAX_FRAMES

    def feed(self, offset: int, event: KernelEvent) -> None:
        self.events += 1
        crash = self.crash
        # A trace ends at its first non-frame line; a RIP: inside it (x86 <#MC>/<IRQ> parts) does not end it.
        if crash is not None and crash.collecting and event.kind not in ("frame", "rip", "pc"):
            crash.collecting = False
        handler = _HANDLERS.get(event.kind)
        if handler is not None:
            handler(self, offset, event)

    # --- memory-failure and hardware-error reports ---
    def _memory_failure(self, offset: int, event: KernelEvent) -> None:
        # A crash kernel re-logs the old MCE bank at boot; after a crash opened, new reports
        # cannot be the cause of it.
        if self.crash_kernel or self.crash is not None or event.pfn is None:
            return
        incident = self.incidents.get(event.pfn)
        if incident is None:
            if len(self.incidents) >= MAX_INCIDENTS:
                del self.incidents[next(iter(self.incidents))]
            incident = self.incidents[event.pfn] = Incident(event.pfn, event, offset)
        incident.update(event)

    def _hardware_error(self, offset: int, event: KernelEvent) -> None:
        if self.crash_kernel:
            return
        if event.address is not None:
            self.hw_reports.append(HwReport(event, offset))
        else:
            self.hw_notes.append((offset, event.text))

    def _inject(self, offset: int, event: KernelEvent) -> None:
        if event.pfn is not None and len(self.injected) < MAX_INJECTED:
            self.injected.setdefault(event.pfn, event.text)

    # --- the crash ---
    def _open_crash(self, offset: int, event: KernelEvent) -> CrashRecord:
        if self.crash is None:
            self.crash = CrashRecord(event, offset)
        return self.crash

    def _oops(self, offset: int, event: KernelEvent) -> None:
        crash = self._open_crash(offset, event)
        if crash.title is None and crash.panic is None:
            crash.title = event

    def _firmware(self, offset: int, event: KernelEvent) -> None:
        crash = self._open_crash(offset, event)
        if crash.firmware is None:
            crash.firmware = event

    def _panic(self, offset: int, event: KernelEvent) -> None:
        crash = self._open_crash(offset, event)
        if crash.panic is None:  # a replayed or second panic line is fallout
            crash.panic = event

    def _panic_end(self, offset: int, event: KernelEvent) -> None:
        # Only stands in for the banner when the panic line itself was lost (SOL drop).
        if self.crash is None or self.crash.panic is None:
            self._panic(offset, event)

    def _site(self, offset: int, event: KernelEvent) -> None:
        if self.crash is not None and self.crash.site is None and event.label:
            self.crash.site = event

    def _call_trace(self, offset: int, event: KernelEvent) -> None:
        # The first trace after the crash started is the crash's own (the oops trace when a
        # panic follows an oops: die() sets TAINT_DIE and panic() prints no second one).
        if self.crash is not None and not self.crash.frames:
            self.crash.collecting = True

    def add_frame(self, function: str) -> None:
        if self.wants_frames:
            self.crash.frames.append(function)

    def _frame(self, offset: int, event: KernelEvent) -> None:
        self.add_frame(event.label)

    def _crash_boot(self, offset: int, event: KernelEvent) -> None:
        self.crash_kernel = True


_HANDLERS = {
    "unhandlable": BootRecord._memory_failure, "action": BootRecord._memory_failure,
    "already_poisoned": BootRecord._memory_failure, "mf_other": BootRecord._memory_failure,
    "hw_error": BootRecord._hardware_error, "inject": BootRecord._inject,
    "oops": BootRecord._oops, "mce_panic": BootRecord._firmware, "ghes_fatal": BootRecord._firmware,
    "panic_mf": BootRecord._panic, "panic_legacy": BootRecord._panic, "panic_other": BootRecord._panic,
    "panic_end": BootRecord._panic_end, "pc": BootRecord._site, "rip": BootRecord._site,
    "call_trace": BootRecord._call_trace, "frame": BootRecord._frame,
    "crash_boot": BootRecord._crash_boot,
}
