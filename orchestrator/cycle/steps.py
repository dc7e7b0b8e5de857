"""What each step of the case cycle hands to the next, as frozen values.

A step takes only the values it needs and returns a new one; nothing is shared and
written by several steps. The chain for a panic case:

    Preflight -> Armed -> Targeted -> Injected -> Observed -> Back -> Collected

and for a case whose injection returned, Observed -> Collected (live dmesg) directly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from orchestrator.config.playbook import Expectation
from orchestrator.cycle.arm_journal import ArmRecord
from orchestrator.cycle.hostwait import BootFacts
from orchestrator.kernel import signatures as sig
from orchestrator.kernel.pages import Target
from orchestrator.protocols.console import ConsoleLine
from orchestrator.errors import KERNEL, LAB
from orchestrator.results.model import ERROR, FAIL, PASS, CaseResult

#: Observed.how: a panic line on the console, the injection's exit status on a host that
#: still answers, or a host that stopped answering without a panic line seen.
PANICKED, RETURNED, LOST = "panicked", "returned", "lost"


@dataclass(frozen=True)
class Preflight:
    before: BootFacts
    page_size: int                      # 4K, 16K or 64K: arm64 kernels differ
    expect: Expectation | None          # resolved for this host; None when skipped
    dumps_before: tuple[str, ...]       # dumps already there: never taken for the new one
    skip_reason: str | None = None      # the kernel lacks what the case needs


@dataclass(frozen=True)
class Armed:
    record: ArmRecord                   # the originals, also kept on the host (cycle/arm_journal.py)


@dataclass(frozen=True)
class Targeted:
    target: Target


@dataclass(frozen=True)
class Injected:
    epoch: int                          # host clock just before the injection (dumps after it count)
    t: float                            # controller monotonic time the injection was fired
    console_mark: int                   # console lines from here on belong to this case
    output: str                         # host path prefix of the injection's .rc/.out/.err (per run, per case)


@dataclass(frozen=True)
class SelMark:
    last_id: int | None                 # the BMC's newest SEL record before the injection (None: empty)


@dataclass(frozen=True)
class PanicSeen:
    event: sig.KernelEvent
    t: float                            # when the panic line completed on the controller
    noticed_t: float                    # when the cycle noticed it


@dataclass(frozen=True)
class Observed:
    how: str                            # PANICKED | RETURNED | LOST
    panic: PanicSeen | None
    console_gap: bool                   # the console was down while the panic could come


@dataclass(frozen=True)
class Back:
    after: BootFacts | None             # None: a survivor that stopped answering when read
    how: str                            # how the host came back, for the timing note


@dataclass(frozen=True)
class Collected:
    dump: object | None = None          # kernel/kdump.py's collected dump, made after the injection
    live_dmesg: str | None = None       # a survivor's dmesg over SSH


@dataclass(frozen=True)
class Verdict:
    """How a case ended: pass/fail/error/skip, why, who is to blame, and whether the host
    could not be put back (left armed)."""

    verdict: str
    reasons: tuple[str, ...] = ()
    blame: str | None = None
    left_armed_: bool = False

    @staticmethod
    def judged(findings: tuple[str, ...]) -> "Verdict":
        """Only the kernel's own findings make a fail; any other finding keeps the case from a
        verdict about the kernel: an error, blamed on the first of them (cycle/verify.py)."""
        kernel = [f for f in findings if getattr(f, "blame", KERNEL) == KERNEL]
        if kernel:
            return Verdict(FAIL, tuple(kernel) + tuple(f for f in findings if f not in kernel), KERNEL)
        if findings:
            return Verdict(ERROR, tuple(findings), getattr(findings[0], "blame", KERNEL))
        return Verdict(PASS)

    def left_armed(self, reason: str) -> "Verdict":
        """The host could not be put back: never a pass; a fail or an error keeps its headline."""
        if self.verdict in (FAIL, ERROR):
            return replace(self, reasons=self.reasons + (reason,), left_armed_=True)
        return Verdict(ERROR, (reason,), LAB, True)


@dataclass(frozen=True)
class CaseRun:
    """What one case cycle produced: its result and the artifacts behind it."""

    result: CaseResult
    console: tuple[ConsoleLine, ...] | None   # lines since the injection's mark; None: no console
    console_t0: float                   # monotonic time console lines are shown relative to
    dump_dmesg: str | None
    panic: PanicSeen | None             # for the benchmark: when the panic was seen vs noticed
    started: float                      # monotonic start of the case


@dataclass(frozen=True)
class Trail:
    """What the steps produced so far, for the machine to hand on; replaced, never changed."""

    preflight: Preflight | None = None
    armed: Armed | None = None
    targeted: Targeted | None = None
    injected: Injected | None = None
    observed: Observed | None = None
    back: Back | None = None
    collected: Collected | None = None
    sel_mark: SelMark | None = None     # hosts with a SEL (cycle/sel_window.py)
    reasons: tuple[str, ...] = ()       # the judge's findings (cycle/verify.py Finding: text + blame)

    def panic_event(self) -> sig.KernelEvent | None:
        panic = self.observed.panic if self.observed else None
        return panic.event if panic else None
