"""At most so many hosts preparing at once: a host being opened, or a case's steps up to its
injection. Past that, more hosts preparing only queue for Python's GIL: measured with 1,000
simulated hosts on one controller (bench/bench_fleet.py), every thread waiting for the GIL
wakes every switch interval, and 1,000 of them burnt 1.5-1.7 cores of which most was that
waking; with 128 preparing at once the run took 17-18 s instead of 20-21 s and its CPU fell
from 1.1 to 0.97 cores. A host that has injected waits for its panic (or its survival)
without a slot, so no host's panic -> reboot time is held up by the limit.

A host waiting for a slot sleeps until one is given back (or the run stops), in turn: it
used to wake every 0.2 s to look, and 870 hosts waiting were 4,350 wake-ups a second
fighting the preparing hosts for the GIL.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from orchestrator.tunables import FLEET_SWITCH_INTERVAL_S, MAX_HOSTS_PREPARING


@contextmanager
def fleet_switch_interval(hosts: int) -> Iterator[None]:
    """A longer GIL switch interval for the block when more hosts than MAX_HOSTS_PREPARING
    run in this process (tunables.FLEET_SWITCH_INTERVAL_S says why); as it was once the last
    such block in the process ends, whatever order several end in."""
    if hosts <= MAX_HOSTS_PREPARING:
        yield
        return
    _SWITCH.enter()
    try:
        yield
    finally:
        _SWITCH.leave()


class _SharedSwitchInterval:
    """The process's one switch interval: the first run in needs it set, the last out puts
    back what it was."""

    def __init__(self) -> None:
        self._lock, self._users, self._before = threading.Lock(), 0, 0.0

    def enter(self) -> None:
        with self._lock:
            if self._users == 0:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(max(self._before, FLEET_SWITCH_INTERVAL_S))
            self._users += 1

    def leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                sys.setswitchinterval(self._before)


_SWITCH = _SharedSwitchInterval()


class PreparingSlots:
    """``limit``: hosts preparing at once; 0 for no limit."""

    def __init__(self, limit: int = 0):
        self._free = limit if limit > 0 else None
        self._changed = threading.Condition()
        self._stopped = False
        self.waiting = 0        # hosts waiting for a slot now

    def stop(self) -> None:
        """The run stops: no host waits for a slot any more (the slot's holder looks at the
        run's stop first: fleet/host_run.py)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    @contextmanager
    def slot(self) -> Iterator[Callable[[], None]]:
        """Hold a slot for the block; the block may give it back earlier by calling what this
        yields (a case, once injected). A run being stopped does not wait for one."""
        held = self._free is not None and self._take()
        lock = threading.Lock()

        def give_back() -> None:
            nonlocal held
            with lock:
                if held:
                    held = False
                    self._give()
        try:
            yield give_back
        finally:
            give_back()

    def _take(self) -> bool:
        with self._changed:
            # Condition wakes its waiters first come, first served: hosts get slots in turn
            self.waiting += 1
            while self._free == 0 and not self._stopped:
                self._changed.wait()
            self.waiting -= 1
            if self._stopped:
                return False
            self._free -= 1
            return True

    def _give(self) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify()
