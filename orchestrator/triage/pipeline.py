"""Bucketing the crashes found in console logs and kdump dmesg.

Input: raw console captures (prompts, escapes, ``[T<pid>]`` caller ids), Debian kdump
``dmesg.<stamp>``, RHEL ``vmcore-dmesg.txt``, journal/syslog kernel lines, each optionally
``.gz``. A file may hold several boots; each boot contributes at most one crash, or, when it
did not crash, the oldest page it kept running on unrecovered (``triage.unrecovered``).

Pipeline (each stage streams, so a 100 MB log runs in bounded memory):
``triage.scan.candidate_lines`` (literal pre-filter) -> ``kernel.signatures.parse_line`` ->
``LogTriage`` (boot segmentation, here) -> ``triage.boot.BootRecord`` (per-boot evidence) ->
``triage.buckets.assemble`` (bucket + fingerprint). Bucket and fingerprint rules are in
triage/buckets.py; this module also walks directories and writes the JSON lines or table.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import zlib
from collections import Counter
from typing import Iterable, Iterator, TextIO

from orchestrator.errors import EXIT_BAD_INPUT, EXIT_OK
from orchestrator.kernel.signatures import KernelEvent, frame_function, parse_line
from orchestrator.triage.boot import BootRecord
from orchestrator.triage.buckets import Crash, assemble
from orchestrator.triage.unrecovered import unrecovered_boot
from orchestrator.triage.scan import CHUNK_BYTES, candidate_lines, open_log, read_chunks, trace_lines

__all__ = ["Crash", "LogTriage", "classify", "triage_stream", "triage_paths"]

# Files picked up when walking a directory (explicit FILE arguments are always read).
# kdump directories also hold multi-GB dump.* / vmcore files that are not text.
_LOG_NAME = re.compile(r"dmesg|^(?:console|serial|messages|kern|syslog)|\.(?:log|txt)$")
_NOT_A_LOG = re.compile(r"^(?:dump|vmcoreinfo|vmcore$)")


class LogTriage:
    """Splits one log's event stream into boots and hands back each boot's crash.

    A boot ends after ``Starting crashdump kernel...``: what follows is the crash kernel,
    which may re-log the old MCE (ignored as a re-log) and may print the saved panic line
    again (dropped as a duplicate). A ``Linux version`` banner starts a boot unless the
    current one has seen no event yet.
    """

    def __init__(self, source: str):
        self.source = source
        self.index = 0
        self.boot = BootRecord()
        self._last_panic: tuple[float, str] | None = None

    def feed(self, offset: int, event: KernelEvent) -> Crash | None:
        finished = None
        if event.kind == "linux_version" and self.boot.events:
            finished = self._next_boot(crash_kernel=False)
        self.boot.feed(offset, event)
        if event.kind == "crash_kernel":
            finished = self._next_boot(crash_kernel=True)
        return finished

    def close(self) -> Crash | None:
        return self._crash_of_boot()

    def _next_boot(self, *, crash_kernel: bool) -> Crash | None:
        crash = self._crash_of_boot()
        self.index += 1
        self.boot = BootRecord(crash_kernel=crash_kernel)
        return crash

    def _crash_of_boot(self) -> Crash | None:
        record = self.boot.crash
        panic = record.panic if record else None
        key = (panic.ts, panic.message) if panic is not None and panic.ts is not None else None
        if key is not None and self.boot.crash_kernel and key == self._last_panic:
            return None  # the crash kernel echoing the saved dmesg: same stamp, same panic
        if key is not None:
            self._last_panic = key
        return (assemble(self.boot, source=self.source, index=self.index)
                or unrecovered_boot(self.boot, source=self.source, index=self.index))


def triage_stream(chunks: Iterable[str], *, source: str) -> Iterator[Crash]:
    """Crashes of a log given as text chunks, yielded as soon as each boot ends."""
    log = LogTriage(source)
    for offset, raw, following in candidate_lines(chunks):
        event = parse_line(raw)
        if event is None:
            continue
        if (crash := log.feed(offset, event)) is not None:
            yield crash
        if following is not None and log.boot.wants_frames:  # WARNING traces are never split
            _feed_trace(log.boot, offset, following)
    if (crash := log.close()) is not None:
        yield crash


def _feed_trace(boot: BootRecord, offset: int, following: str) -> None:
    for line in trace_lines(following):
        name = frame_function(line)   # ~1 us instead of a full parse: most trace lines are frames
        if name:
            boot.add_frame(name)
        elif name is None and (event := parse_line(line)) is not None:
            boot.feed(offset, event)  # RIP: inside the trace, or a kernel line printed into it
        if not boot.wants_frames:
            return


def _batched(lines: Iterable[str]) -> Iterator[str]:
    batch: list[str] = []
    size = 0
    for line in lines:
        line = line if line.endswith("\n") else line + "\n"
        batch.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield "".join(batch)
            batch, size = [], 0
    yield "".join(batch)


def classify(text_or_lines: str | Iterable[str], *, source: str) -> list[Crash]:
    """Pure: the crashes of one log (a whole text or its lines), in log order."""
    chunks = [text_or_lines] if isinstance(text_or_lines, str) else _batched(text_or_lines)
    return list(triage_stream(chunks, source=source))


def triage_file(path: str) -> Iterator[Crash]:
    with open_log(path) as stream:
        yield from triage_stream(read_chunks(stream), source=path)


def _log_files(path: str) -> Iterator[str]:
    if not os.path.isdir(path):
        yield path
        return
    for folder, subdirs, files in os.walk(path):
        subdirs.sort()
        for name in sorted(files):
            bare = name[:-3] if name.endswith(".gz") else name
            if _LOG_NAME.search(bare) and not _NOT_A_LOG.match(bare):
                yield os.path.join(folder, name)


def triage_paths(paths: Iterable[str], *, jsonl: bool, out: TextIO) -> int:
    """Triage files and directories; 0 when it ran (crashes or not), 2 on bad input."""
    paths = list(paths)
    missing = [p for p in paths if not os.path.exists(p)]
    if missing or not paths:
        print(f"orchestrator triage: error: no such file or directory: {missing[0] if missing else '(none given)'}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    status, crashes, files = EXIT_OK, [], 0
    for path in (f for p in paths for f in _log_files(p)):
        files += 1
        try:
            for crash in triage_file(path):
                if jsonl:
                    out.write(json.dumps(crash.as_json()) + "\n")
                else:
                    crashes.append(crash)
        except BrokenPipeError:
            raise           # our reader went away (``| head``): not a bad log; the face stops
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            print(f"orchestrator triage: error: {path}: {error}", file=sys.stderr)
            status = EXIT_BAD_INPUT
    if not jsonl:
        write_table(crashes, files, out)
    return status


def _row(crash: Crash) -> list[str]:
    return [crash.source, str(crash.boot), crash.bucket, crash.fingerprint,
            hex(crash.pfn) if crash.pfn is not None else "-",
            f"{crash.delay_s:.3f}" if crash.delay_s is not None else "-",
            crash.address_in_page or "-", crash.panic or crash.signature.split(" | ", 1)[-1]]


def _aligned(header: list[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] + "\n")


def write_table(crashes: list[Crash], files: int, out: TextIO) -> None:
    """The crashes, then one line per fingerprint with its count (what a fleet groups by)."""
    if crashes:
        _aligned(["FILE", "BOOT", "BUCKET", "FINGERPRINT", "PFN", "DELAY_S", "IN_PAGE", "PANIC / TITLE"],
                 [_row(c) for c in crashes], out)
        out.write("\n")
        counts = Counter(c.fingerprint for c in crashes)
        first = {c.fingerprint: c for c in reversed(crashes)}
        _aligned(["COUNT", "FINGERPRINT", "BUCKET", "SIGNATURE"],
                 [[str(n), fp, first[fp].bucket, first[fp].signature] for fp, n in counts.most_common()], out)
        out.write("\n")
    out.write(f"{len(crashes)} crash(es) in {files} file(s)\n")
