"""What a report makes of one finished case, made once per run.

A run's reports (run.json, report.html) are assembled again and again while it goes on
(fleet/run_folder.py), each time from every case finished so far. A finished case never
changes (CaseResult is frozen), so its part of each report is kept and reused: redoing
every case for every report made each report of a 1,000-case run ~0.6 s of the
controller's one core of Python (bench/bench_fleet.py).
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, Hashable, TypeVar

from .model import CaseResult

T = TypeVar("T")


class PerCase(Generic[T]):
    """``make(case, *args)``, once per case object and arguments."""

    def __init__(self, make: Callable[..., T]):
        self._make = make
        self._lock = threading.Lock()
        self._done: dict[tuple, tuple[CaseResult, T]] = {}

    def of(self, case: CaseResult, *args: Hashable) -> T:
        key = (id(case), *args)
        with self._lock:
            kept = self._done.get(key)
        if kept is None or kept[0] is not case:      # not made yet, or the id of a case since let go
            kept = (case, self._make(case, *args))
            with self._lock:
                self._done[key] = kept
        return kept[1]
