"""A host's serial console as a line transcript: the console capability (IPMI SOL)."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass

from orchestrator.errors import UnsupportedOperation


@dataclass(frozen=True)
class ConsoleLine:
    index: int          # position in the transcript, stable for the console's lifetime
    t: float            # time.monotonic() when the line completed on the controller
    text: str           # clean_console_text() of the line, without its newline


# CSI (ESC [ ... final), OSC (ESC ] ... BEL/ST), and two-character ESC sequences.
_ESCAPE_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])")
# C0 and C1 controls except TAB and newline: \r from serial consoles, NULs from log files,
# a lone C1 introducer (dropped, not interpreted).
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_console_text(text: str) -> str:
    """``text`` without terminal escape sequences and control characters (TAB is kept).

    The one cleaner of console and log text: the SOL transcript and the kernel log parser
    both use it. Lines are usually clean already, so each pass runs only when needed (the
    triage scans logs of millions of lines)."""
    if "\x1b" in text:
        text = _ESCAPE_SEQUENCE.sub("", text)
    if _CONTROL_CHARACTER.search(text):
        text = _CONTROL_CHARACTER.sub("", text)
    return text


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

    def send_break(self, then: str = "") -> None:
        """A serial BREAK, then ``then`` typed within the kernel's 5 s magic-SysRq window
        (``c``: crash into kdump: what arm64 hosts without NMI get instead of one).
        Optional: raises ``UnsupportedOperation``; returns once the BMC took both."""
        raise UnsupportedOperation("serial BREAK on this console")

    @abc.abstractmethod
    def close(self) -> None: ...
