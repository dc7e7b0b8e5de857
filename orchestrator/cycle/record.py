"""The one thing a case cycle accumulates: its timings, evidence and recovery notes.

Phases append to it; they never read it back to decide anything (decisions travel in the
frozen values of cycle/steps.py).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

from orchestrator.cycle.waitmeter import WaitMeter
from orchestrator.results.model import Evidence, PhaseTiming


class CaseRecord:
    def __init__(self, meter: WaitMeter, on_state: Callable[[str], None]):
        self.started = time.monotonic()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.meter = meter
        self._on_state = on_state
        self.timings: list[PhaseTiming] = []
        self.evidence: list[Evidence] = []
        self.recovery: list[str] = []

    def begin(self) -> tuple[float, float]:
        """Start a phase: (monotonic start, time waited on the host so far)."""
        return time.monotonic(), self.meter.total

    def enter(self, state: str, begun: tuple[float, float], note: str = "") -> None:
        """The cycle reached ``state``; the phase that led there began at ``begun``."""
        now, (started, waited0) = time.monotonic(), begun
        waited = min(self.meter.total - waited0, now - started)
        self.timings.append(PhaseTiming(state=state, started=round(started - self.started, 3),
                                        seconds=round(now - started, 3), waited=round(waited, 3), note=note))
        self._on_state(state)

    def add_evidence(self, source: str, text: str, since_inject: float | None = None) -> None:
        t = None if since_inject is None else round(since_inject, 3)
        self.evidence.append(Evidence(source=source, text=text, t=t))

    def note_recovery(self, text: str) -> None:
        self.recovery.append(text)
