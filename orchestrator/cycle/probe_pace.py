"""One budget of boot-probe starts for every host this controller process waits on.

Each host waiting for a reboot starts an SSH probe every SSH_POLL_SLOW_S (hostwait.py), and
a probe to a host that is not up yet costs the controller CPU: ~0.4 ms for a simulated host
once 1,000 wait at once (the waiting thread's loop, the probe's thread, GIL handovers), and
Fabric's refused connection alone 1.4 ms on loopback (bench/bench_transport.py). 1,000
simulated hosts waiting took 1.1-1.7 cores for the waiting alone (bench/bench_boot_wait.py).
So starts are handed out in turn, at most BOOT_PROBES_PER_S: while the waiting hosts ask for
fewer nothing changes (one lab host is still noticed within its poll period); past it each
waiting host probes less often, round robin, and the controller's CPU stays bounded.

Per process: what it protects is this process's core (each fleet worker has its own).
"""

from __future__ import annotations

import threading

from orchestrator.tunables import BOOT_PROBES_PER_S


class ProbePace:
    def __init__(self, per_second: float = BOOT_PROBES_PER_S):
        self._gap = 1.0 / per_second
        self._next = float("-inf")
        self._lock = threading.Lock()

    def reserve(self, earliest: float) -> float:
        """The monotonic time at which the caller's next probe may start: ``earliest`` if the
        budget has room then, else the first free turn. Each waiting host holds at most one
        turn ahead, so no turn is further away than hosts waiting / BOOT_PROBES_PER_S."""
        with self._lock:
            at = max(earliest, self._next)
            self._next = at + self._gap
            return at


#: the process's budget, shared by every wait_for_boot that is not given its own
SHARED = ProbePace()
