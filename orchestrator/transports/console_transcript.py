"""Console bytes -> a line transcript that waiters see the moment a newline arrives.

Shared by the SOL console (sol.py) and the fake console (fake.py): a Condition wakes
``wait_for`` at once, no polling. Lines are cleaned by ``protocols.console.clean_console_text``.
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from typing import Callable

from orchestrator.protocols.console import ConsoleLine, clean_console_text

MAX_LINE_CHARS = 4096           # an unterminated line (flood, binary noise) is cut here


class LineAssembler:
    """Bytes in, complete cleaned lines out; keeps the unterminated tail between chunks."""

    def __init__(self, max_line: int = MAX_LINE_CHARS):
        self.max_line = max_line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tail = ""

    def feed(self, data: bytes) -> list[str]:
        *complete, self._tail = (self._tail + self._decoder.decode(data)).split("\n")
        while len(self._tail) > self.max_line:
            complete.append(self._tail[:self.max_line])
            self._tail = self._tail[self.max_line:]
        return [clean_console_text(line) for line in complete]


class ConsoleTranscript:
    """Thread-safe line transcript; feeding is cheap (it runs inside pyghmi callbacks)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._assembler = LineAssembler()
        self._lines: list[ConsoleLine] = []
        self._changed = threading.Condition()

    def feed(self, data: bytes) -> None:
        texts = self._assembler.feed(data)
        if not texts:
            return
        with self._changed:
            now = self._clock()
            for text in texts:
                self._lines.append(ConsoleLine(len(self._lines), now, text))
            self._changed.notify_all()

    def mark(self) -> int:
        with self._changed:
            return len(self._lines)

    def lines(self, since: int = 0) -> list[ConsoleLine]:
        with self._changed:
            return self._lines[max(since, 0):]

    def wait_for(self, pattern: re.Pattern[str], *, since: int, timeout: float) -> ConsoleLine | None:
        deadline = time.monotonic() + timeout
        position = max(since, 0)
        with self._changed:
            while True:
                for line in self._lines[position:]:
                    if pattern.search(line.text):
                        return line
                position = max(position, len(self._lines))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)
