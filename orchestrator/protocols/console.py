"""A host's serial console as a line transcript: the console capability (IPMI SOL)."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ConsoleLine:
    index: int          # position in the transcript, stable for the console's lifetime
    t: float            # time.monotonic() when the line completed on the controller
    text: str           # cleaned: ANSI/control characters removed, no trailing newline


class ConsoleProtocol(abc.ABC):
    """A line transcript of the host's console, fed in the background.

    Raw bytes go unmodified to the console log; ``lines``/``wait_for`` see cleaned,
    line-assembled text (match substrings: a shell prompt may precede a kernel line)."""

    @abc.abstractmethod
    def mark(self) -> int:
        """Index of the next line to arrive; pass it as ``since`` to see only newer lines."""

    @abc.abstractmethod
    def lines(self, since: int = 0) -> list[ConsoleLine]: ...

    @abc.abstractmethod
    def wait_for(self, pattern: re.Pattern[str], *, since: int, timeout: float) -> ConsoleLine | None:
        """First line at or after ``since`` matching ``pattern``; None on timeout."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """False once the console is known dead (and not yet re-established)."""

    @abc.abstractmethod
    def close(self) -> None: ...
