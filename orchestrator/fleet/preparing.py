"""At most so many hosts preparing at once: a host being opened, or a case's steps up to its
injection. Past that, more hosts preparing only queue for Python's GIL: measured with 1,000
simulated hosts on one controller (bench/bench_fleet.py), every thread waiting for the GIL
wakes every switch interval, and 1,000 of them burnt 1.5-1.7 cores of which most was that
waking; with 128 preparing at once the run took 17-18 s instead of 20-21 s and its CPU fell
from 1.1 to 0.97 cores. A host that has injected waits for its panic (or its survival)
without a slot, so no host's panic -> reboot time is held up by the limit.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from orchestrator.tunables import SIGNAL_POLL_S


class PreparingSlots:
    """``limit``: hosts preparing at once; 0 for no limit."""

    def __init__(self, limit: int = 0):
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None

    @contextmanager
    def slot(self, stop: threading.Event) -> Iterator[Callable[[], None]]:
        """Hold a slot for the block; the block may give it back earlier by calling what this
        yields (a case, once injected). A run being stopped does not wait for one."""
        held = self._slots is not None and self._take(stop)
        lock = threading.Lock()

        def give_back() -> None:
            nonlocal held
            with lock:
                if held:
                    held = False
                    self._slots.release()
        try:
            yield give_back
        finally:
            give_back()

    def _take(self, stop: threading.Event) -> bool:
        while not self._slots.acquire(timeout=SIGNAL_POLL_S):
            if stop.is_set():
                return False
        return True
