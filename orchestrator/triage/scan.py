"""Streaming pre-filter for triage: the few lines of a log that can carry an event.

Why not parse every line: a Python loop over lines costs ~1 us per line, which caps triage
near 200 files of 50 KB per second. ``str.find`` scans at several GB/s, so the log is read
in 1 MiB chunks and only the lines around a handful of literals are handed to the parser:

* global literals (memory-failure, hardware-error, panic, boot and crash-kernel banners)
  are searched in the whole text;
* an oops always sits a few KB before a ``Call trace:`` header, and its title line carries
  the die counter ``[#N]``: one ``rfind("[#")`` per header finds it, and only then are the
  few lines around it searched (the ``BUG:`` / ``Unable to handle`` lines just before, the
  ``pc :`` / ``RIP:`` crash site after). Panic traces and WARNING traces have no die line
  and cost one search. The text after a header comes along with the header line, and
  the consumer splits it into frames only for the trace a crash wants (not for WARNINGs);
* ``elfcorehdr`` (the mark of a crash-kernel boot) is only searched just after a
  ``Linux version`` banner.

Memory stays bounded: one chunk plus a small tail kept for the look-back windows. Lines are
yielded in file order and each at most once, so the consumer sees a plain ordered stream.
"""

from __future__ import annotations

import codecs
import gzip
from typing import BinaryIO, Iterable, Iterator

CHUNK_BYTES = 1 << 20
TRACE_LOOKBACK = 8192      # oops title / pc / RIP lines sit within this many chars before "Call trace:"
TRACE_SPAN = 4096          # text after a header handed over for its frames (MAX_TRACE_LINES lines)
BANNER_SPAN = 12288        # "elfcorehdr" appears this close after a crash kernel's "Linux version"
TAIL_KEEP = max(TRACE_SPAN, BANNER_SPAN)
LOOKAHEAD = TRACE_LOOKBACK + 4096
MAX_TRACE_LINES = 32

DIE_PRELUDE = 2048         # BUG: / Unable to handle ... lines printed just before the die line

BANNER = "Linux version"
GLOBAL_LITERALS = ("emory failure", "Hardware Error", "Kernel panic", "crashdump kernel")
TRACE_HEADER = "Call "
DIE_COUNTER = "[#"
PRELUDE_LITERALS = ("BUG", "Unable to handle kernel", "general protection fault")
SITE_LITERALS = ("pc : ", "RIP: ")


def _line_starts(buf: str, literal: str, lo: int, hi: int, into: set[int]) -> list[int]:
    """Add the start of every line holding ``literal`` within buf[lo:hi]; return them."""
    starts = []
    pos = buf.find(literal, lo, hi)
    while pos >= 0:
        starts.append(buf.rfind("\n", 0, pos) + 1)
        end = buf.find("\n", pos)
        if end < 0:
            break
        pos = buf.find(literal, end + 1, hi)
    into.update(starts)
    return starts


def _trace_headers(buf: str, lo: int, hi: int) -> Iterator[int]:
    pos = buf.find(TRACE_HEADER, lo, hi)
    while pos >= 0:
        if buf.startswith(("Call Trace:", "Call trace:"), pos):
            yield pos
        pos = buf.find(TRACE_HEADER, pos + 1, hi)


def trace_lines(following: str) -> Iterator[str]:
    """The frame lines at the start of the text after a trace header (up to the first other line)."""
    for line in following.split("\n", MAX_TRACE_LINES)[:MAX_TRACE_LINES]:
        if "+0x" not in line and not line.rstrip().endswith(">"):  # frames, or <IRQ>/<TASK> marks
            return
        yield line


def _oops_lines(buf: str, header: int, lo: int, hi: int, into: set[int]) -> None:
    """The die line before a trace header, the lines just before it and the crash site after it."""
    die = buf.rfind(DIE_COUNTER, max(0, header - TRACE_LOOKBACK), header)
    if die < 0:
        return
    die_line = buf.rfind("\n", 0, die) + 1
    if lo <= die_line < hi:
        into.add(die_line)
    for literal in PRELUDE_LITERALS:
        _line_starts(buf, literal, max(lo, die_line - DIE_PRELUDE), min(hi, die_line), into)
    for literal in SITE_LITERALS:
        _line_starts(buf, literal, max(lo, die_line), min(hi, header), into)


def candidate_offsets(buf: str, start: int, cut: int) -> tuple[set[int], set[int]]:
    """(line starts worth parsing, those of them that are trace headers) within buf[start:cut].

    buf may extend before ``start`` (already-processed tail) and after ``cut`` (look-ahead)
    so that windows around a line near either end are complete.
    """
    found: set[int] = set()
    headers: set[int] = set()
    for literal in GLOBAL_LITERALS:
        _line_starts(buf, literal, start, cut, found)
    for header in _trace_headers(buf, start, min(len(buf), cut + TRACE_LOOKBACK)):
        if header < cut:
            headers.add(buf.rfind("\n", 0, header) + 1)
        _oops_lines(buf, header, start, cut, found)
    # banners in the kept tail were searched for elfcorehdr only up to the previous cut
    banners = _line_starts(buf, BANNER, max(0, start - BANNER_SPAN), start, set())
    banners += _line_starts(buf, BANNER, start, cut, found)
    for banner in banners:
        _line_starts(buf, "elfcorehdr", max(start, banner), min(cut, banner + BANNER_SPAN), found)
    return found | headers, headers


def candidate_lines(chunks: Iterable[str]) -> Iterator[tuple[int, str, str | None]]:
    """(absolute offset, raw line, following text) of every candidate line, in text order.

    ``following`` is the text after a trace header line (TRACE_SPAN characters, for
    ``trace_lines``), None for other lines.
    """
    buf, start, base = "", 0, 0   # buf[:start] is already-processed tail kept for look-backs
    for chunk, done in _with_last(chunks):  # a small file is one chunk: processed in one pass
        buf += chunk
        if done:
            cut = len(buf)
        else:
            limit = len(buf) - LOOKAHEAD
            cut = buf.rfind("\n", start, limit) + 1 if limit > start else 0
            if cut <= start:
                continue  # not enough text yet to keep a full look-ahead
        found, headers = candidate_offsets(buf, start, cut)
        for offset in sorted(found):
            end = buf.find("\n", offset)
            end = end if end >= 0 else len(buf)
            following = buf[end + 1:end + 1 + TRACE_SPAN] if offset in headers else None
            yield base + offset, buf[offset:end], following
        keep_from = max(0, cut - TAIL_KEEP)
        buf, start, base = buf[keep_from:], cut - keep_from, base + keep_from


def _with_last(items: Iterable[str]) -> Iterator[tuple[str, bool]]:
    iterator = iter(items)
    previous = next(iterator, None)
    if previous is None:
        return
    for item in iterator:
        yield previous, False
        previous = item
    yield previous, True


def read_chunks(stream: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[str]:
    """Decoded chunks of a binary stream (invalid UTF-8 replaced, split characters kept whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while block := stream.read(size):
        yield decoder.decode(block)
    if rest := decoder.decode(b"", final=True):
        yield rest


def open_log(path: str) -> BinaryIO:
    """A binary stream of a log file, transparently gunzipped for ``.gz`` names."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
