"""Accounting of time spent waiting on the host, to report the orchestrator's own overhead
(cycle time minus host waits) honestly: every call into a transport is a host wait."""

from __future__ import annotations

import threading
import time
from typing import Any


def pause(seconds: float, until: threading.Event | None = None) -> None:
    """Wait ``seconds``, or less if ``until`` is set meanwhile (a probe that finished)."""
    if until is None:
        time.sleep(seconds)
    else:
        until.wait(seconds)


class WaitMeter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0.0

    def add(self, seconds: float) -> None:
        with self._lock:
            self.total += seconds

    def sleep(self, seconds: float, until: threading.Event | None = None) -> None:
        """A pause between polls of the host is time spent waiting on the host (all of it:
        the OS's oversleep too, which hundreds of short polls turn into a tenth of a second)."""
        t0 = time.monotonic()
        pause(seconds, until)
        self.add(time.monotonic() - t0)

    def wrap(self, inner: Any) -> Any:
        return None if inner is None else _Metered(inner, self)


class _Metered:
    """Proxy timing every method call on a transport (shell, power, console)."""

    def __init__(self, inner: Any, meter: WaitMeter):
        self._inner, self._meter = inner, meter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return attr(*args, **kwargs)
            finally:
                self._meter.add(time.monotonic() - t0)
        return timed
