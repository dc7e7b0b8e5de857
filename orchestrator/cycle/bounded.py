"""A shell whose commands all end by one phase's deadline.

The arm and restore phases run helpers (kernel/sysctl.py) that pick their own per-command
timeouts; seen through this view, every command gets at most what is left of the phase's
deadline, and a phase out of time raises ``DeadlineExceeded`` instead of starting another.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from orchestrator.errors import DeadlineExceeded
from orchestrator.protocols.shell import CommandResult, ShellProtocol
from orchestrator.protocols.shell_batch import Section


class BoundedShell:
    def __init__(self, inner: ShellProtocol, seconds: float, state: str):
        self._inner, self._seconds, self._state = inner, seconds, state
        self._end = time.monotonic() + seconds

    def run(self, command: str, *, timeout: float, check: bool = True) -> CommandResult:
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(self._state, self._seconds, f"before `{command[:40]}`")
        return self._inner.run(command, timeout=min(timeout, left), check=check)

    def prefetch(self, sections: list[Section]) -> None:
        """Commands sent ahead (cycle/ahead.py) get what is left of the deadline, all together."""
        left = self._end - time.monotonic()
        ahead = getattr(self._inner, "prefetch", None)
        if ahead is not None:
            ahead([replace(s, timeout=min(s.timeout, left)) for s in sections] if left > 0 else [],
                  timeout=max(left, 0.0))

    def __getattr__(self, name: str) -> Any:
        # Only run() and prefetch() are bounded: the phases that use this view run nothing else.
        return getattr(self._inner, name)
