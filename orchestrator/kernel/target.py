"""The page frame chosen for an injection, and the kpageflags that describe it.

kpageflags bits: include/uapi/linux/kernel-page-flags.h (kernel-facts.md §5.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import FatalInfraError

KPF = {"LOCKED": 0, "ERROR": 1, "REFERENCED": 2, "UPTODATE": 3, "DIRTY": 4, "LRU": 5, "ACTIVE": 6,
       "SLAB": 7, "WRITEBACK": 8, "RECLAIM": 9, "BUDDY": 10, "MMAP": 11, "ANON": 12, "SWAPCACHE": 13,
       "SWAPBACKED": 14, "COMPOUND_HEAD": 15, "COMPOUND_TAIL": 16, "HUGE": 17, "UNEVICTABLE": 18,
       "HWPOISON": 19, "NOPAGE": 20, "KSM": 21, "THP": 22, "OFFLINE": 23, "ZERO_PAGE": 24, "IDLE": 25,
       "PGTABLE": 26, "RESERVED": 32, "MLOCKED": 33, "MAPPEDTODISK": 34, "PRIVATE": 35}


def decode_kpageflags(flags: int) -> tuple[str, ...]:
    return tuple(name for name, bit in KPF.items() if flags >> bit & 1)


@dataclass(frozen=True)
class Target:
    page_class: str
    pfn: int
    phys_addr: int
    kpageflags: int
    kpagecount: int | None
    how: str                    # evidence: where it was found and why it qualifies
    cleanup: str | None         # sh command to run after a survive case (idempotent)
    page_size: int = 4096


class TargetNotFound(FatalInfraError):
    """No page of the class qualifies (or the host cannot be scanned)."""
