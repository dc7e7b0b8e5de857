"""Holding a host's lease for one case: take it (or wait for it), renew it while the case
runs, stretch it over the injection, give it back.

Renewal runs on its own SSH connection in a background thread, so a cycle busy waiting for
a panic never lets its lease lapse. A host that has just panicked cannot be renewed on until
it is back: before the injection the lease is therefore stretched over everything the case
may still wait for (its panic, dump, wedge and NMI deadlines); a controller killed after
that leaves the host leased until the stretch ends, and no longer.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from orchestrator.config.playbook import Case
from orchestrator.errors import InfraError
from orchestrator.fleet import lease
from orchestrator.fleet.lease import Holder, LeaseHeld
from orchestrator.protocols.shell import ShellProtocol
from orchestrator.tunables import LEASE_RENEW_S, LEASE_TTL_S, LEASE_WAIT_POLL_S

#: deadlines a case may still spend after its injection, while the host may not answer
AFTER_INJECTION = ("inject", "panic", "survive", "dump", "wedge", "nmi", "collect", "restore")


class LeaseKeeper:
    def __init__(self, shell: ShellProtocol, host: str, state_dir: str, holder: Holder):
        self.shell, self.host, self.state_dir, self.holder = shell, host, state_dir, holder
        self._floor = 0.0                   # monotonic time the lease must last until, at least
        self._stop = threading.Event()
        self._renewing = threading.Lock()   # the renewal thread and stretch() share one connection
        self._thread: threading.Thread | None = None
        self.taken: dict[str, str] = {}

    def take(self, wait_s: float, sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
        """Take the lease, waiting up to ``wait_s`` for its holder to give it back or die."""
        end, steal = time.monotonic() + wait_s, ""
        while True:
            try:
                self.taken = lease.take(self.shell, self.host, self.state_dir, self.holder, LEASE_TTL_S, steal=steal)
                return self.taken
            except LeaseHeld as held:
                if lease.holder_died_here(held.holder) and held.holder.get("token") != steal:
                    steal = held.holder.get("token", "")      # a dead process of this machine: take over now
                    continue
                if time.monotonic() + LEASE_WAIT_POLL_S > end:
                    raise
                sleep(LEASE_WAIT_POLL_S)

    def stretch(self, seconds: float) -> None:
        """From now on the lease lasts at least ``seconds`` (renewed at once)."""
        self._floor = max(self._floor, time.monotonic() + seconds)
        self._renew()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_forever, name=f"lease {self.host}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=LEASE_RENEW_S)
        with self._renewing:
            try:
                self._give_back()
            finally:
                self.shell.close()

    def _give_back(self) -> None:
        """Right after a panic the lease connection may still be the one to the boot that died
        (no renewal fell since the host came back): a second try goes over a fresh connection,
        or the host stays leased for the whole injection stretch."""
        for _ in range(2):
            try:
                lease.release(self.shell, self.host, self.state_dir, self.holder)
                return
            except InfraError:
                self.shell.close()      # a host that is down keeps the lease until it expires by itself

    def _renew_forever(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            self._renew()

    def _renew(self) -> None:
        with self._renewing:
            ttl = max(LEASE_TTL_S, self._floor - time.monotonic())
            try:
                lease.take(self.shell, self.host, self.state_dir, self.holder, ttl)
            except InfraError:
                self.shell.close()     # the host is rebooting: the stretch covers it; try again later


@contextmanager
def held_for_case(shell: ShellProtocol, host: str, state_dir: str, holder: Holder, case: Case,
                  wait_s: float) -> Iterator[LeaseKeeper]:
    """The host's lease for one case; ``LeaseHeld`` (naming the holder) if it cannot be had."""
    keeper = LeaseKeeper(shell, host, state_dir, holder)
    keeper.take(wait_s)
    keeper.start()
    try:
        yield keeper
    finally:
        keeper.release()


def injection_stretch(case: Case) -> float:
    """How long the lease must hold from the injection on without renewal."""
    return sum(float(case.deadlines.get(name, 0.0)) for name in AFTER_INJECTION) + LEASE_TTL_S
