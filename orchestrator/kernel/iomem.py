"""/proc/iomem, and page-frame spans computed from it: where in RAM a page class may be found.

Spans are ``(first_pfn, end_pfn)`` half-open pairs of whole pages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


@dataclass(frozen=True)
class IomemRange:
    start: int
    end: int                    # inclusive, as /proc/iomem prints it
    name: str
    depth: int                  # 0 = top level; children are indented two spaces per level


def parse_iomem(text: str) -> list[IomemRange]:
    ranges = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            ranges.append(IomemRange(int(m[2], 16), int(m[3], 16), m[4].strip(), len(m[1]) // 2))
    return ranges


def pfn_span(r: IomemRange, page_size: int) -> tuple[int, int]:
    return -(-r.start // page_size), (r.end + 1) // page_size      # whole pages only


def ram_pfns(iomem: list[IomemRange], page_size: int) -> list[tuple[int, int]]:
    ram = [pfn_span(r, page_size) for r in iomem if r.depth == 0 and r.name == "System RAM"]
    holes = pfns_named(iomem, "Crash kernel", page_size)    # poisoning it would break kdump
    return subtract([s for s in ram if s[1] > 0], holes)


def pfns_named(iomem: list[IomemRange], name: str, page_size: int,
               exact: bool = False) -> list[tuple[int, int]]:
    return [pfn_span(r, page_size) for r in iomem
            if (r.name == name if exact else r.name.startswith(name))]


def clip(spans, lo: int, hi: int | None) -> list[tuple[int, int]]:
    hi = float("inf") if hi is None else hi
    return [(max(a, lo), min(b, hi)) for a, b in spans if max(a, lo) < min(b, hi)]


def subtract(spans, holes) -> list[tuple[int, int]]:
    for h0, h1 in holes:
        spans = [piece for a, b in spans
                 for piece in ((a, min(b, h0)), (max(a, h1), b)) if piece[0] < piece[1]]
    return spans
