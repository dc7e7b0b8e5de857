"""What each step of the case cycle hands to the next, as frozen values.

A step takes only the values it needs and returns a new one; nothing is shared and
written by several steps. The chain for a panic case:

    Preflight -> Armed -> Targeted -> Injected -> Observed -> Back -> Collected

and for a case whose injection returned, Observed -> Collected (live dmesg) directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from orchestrator.config.playbook import Expectation
from orchestrator.cycle.hostwait import BootFacts
from orchestrator.kernel import signatures as sig
from orchestrator.kernel.pages import Target
from orchestrator.protocols.console import ConsoleLine
from orchestrator.results.model import CaseResult

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
    old_sysctls: Mapping[str, str]      # what restore puts back
    kdump_unloaded: bool                # restore reloads the crash kernel if still the same boot

    @staticmethod
    def of(old_sysctls: dict, kdump_unloaded: bool) -> "Armed":
        return Armed(MappingProxyType(dict(old_sysctls)), kdump_unloaded)


@dataclass(frozen=True)
class Targeted:
    target: Target


@dataclass(frozen=True)
class Injected:
    epoch: int                          # host clock just before the injection (dumps after it count)
    t: float                            # controller monotonic time the injection was fired
    console_mark: int                   # console lines from here on belong to this case


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
    reasons: tuple[str, ...] = ()       # the judge's reasons to fail

    def panic_event(self) -> sig.KernelEvent | None:
        panic = self.observed.panic if self.observed else None
        return panic.event if panic else None
