"""Holding a host's lease while a run works on it: take it (or wait for it) before each case,
keep it renewed, give it back.

Before each case the lease is taken (or, when this run already holds it, renewed) for the
whole case's deadline budget: a host that panics cannot be renewed on until it is back, so
the lease must outlast everything the case may still wait for without the controller's
help. A background thread renews it meanwhile (a case that overruns its budget keeps it),
on its own SSH connection, so a cycle busy waiting for a panic never lets it lapse. A
controller killed mid-case leaves the host leased until that budget ends, no longer (and a
dead holder on the same machine is taken over at once: fleet/lease.py).

A local run keeps the lease from one case of a host to the next; the pytest face gives it
back after every case, so sibling workers can take turns. The lease is written with
LEASE_HEADROOM_S more than asked and kept renewed, so a case whose budget it still covers
(by the controller's clock, counted from when the last take or renewal was sent) needs no
command of its own: a lease command was ~0.1 s of every case's wall time on a lab guest,
~0.4 s after a reboot (a new connection), against a target of 50 ms per case.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from orchestrator.config.playbook import Case
from orchestrator.errors import InfraError, RetryableInfraError
from orchestrator.fleet import lease
from orchestrator.fleet.lease import Holder, LeaseHeld
from orchestrator.protocols.shell import ShellProtocol
from orchestrator.tunables import (LEASE_COMMAND_TIMEOUT_S, LEASE_HEADROOM_S, LEASE_RENEW_RETRY_S,
                                   LEASE_RENEW_S, LEASE_TTL_S, LEASE_WAIT_POLL_S)


class LeaseKeeper:
    def __init__(self, shell: ShellProtocol, host: str, state_dir: str, holder: Holder):
        self.shell, self.host, self.state_dir, self.holder = shell, host, state_dir, holder
        self._ttl = LEASE_TTL_S
        self._stop = threading.Event()
        self._renewing = threading.Lock()   # the renewal thread and take() share one connection
        self._thread: threading.Thread | None = None
        self._valid_until = 0.0             # monotonic: the host's lease holds at least until then
        self.taken: dict[str, str] = {}

    def take(self, ttl_s: float, wait_s: float, sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
        """Take (or renew) the lease for ``ttl_s``, waiting up to ``wait_s`` for a holder
        that is someone else to give it back or die; ``LeaseHeld`` names that holder."""
        polls_left, steal = int(wait_s // LEASE_WAIT_POLL_S), ""
        while True:
            try:
                with self._renewing:
                    self._ttl = ttl_s + LEASE_HEADROOM_S
                    if not (self.taken and self._valid_until - time.monotonic() >= ttl_s):
                        self.taken = self._once(self._take, steal)   # else still ours for all of ttl_s
                self._start_renewing()
                return self.taken
            except LeaseHeld as held:
                if lease.holder_died_here(held.holder) and held.holder.get("token") != steal:
                    steal = held.holder.get("token", "")      # a dead process of this machine: take over now
                    continue
                if polls_left <= 0:
                    raise
                polls_left -= 1
                sleep(LEASE_WAIT_POLL_S)

    def warm_up(self, ttl_s: float | None = None) -> threading.Thread:
        """Connect the lease's shell in the background while the host is being opened, so
        the first case does not wait for its SSH handshake (~0.5 s on a lab guest). With
        ``ttl_s`` the lease is taken there for the first case (a holder found there is left
        for that case's own take to report, or wait for)."""
        def connect() -> None:
            with self._renewing:
                try:
                    if ttl_s is None:
                        self.shell.run("true", timeout=LEASE_RENEW_S, check=False)
                    else:
                        self._ttl = ttl_s + LEASE_HEADROOM_S
                        self.taken = self._take()
                except LeaseHeld:
                    pass
                except InfraError:
                    self.shell.close()       # the first take connects again, and says why
        thread = threading.Thread(target=connect, name=f"lease {self.host} connect", daemon=True)
        thread.start()
        return thread

    def release(self, connection_of: ShellProtocol | None = None) -> None:
        """Give the lease back (a host that is down keeps it until it expires by itself).
        ``connection_of``: a shell done with the host whose live connection the release takes
        over: after a reboot the lease's own connection is gone, and a new handshake made
        the end-of-run release ~170 ms on a lab guest instead of ~80 ms."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=LEASE_RENEW_S)
            self._thread = None
        with self._renewing:
            if self.taken and connection_of is not None:
                self.shell.adopt(connection_of)
            if self.taken:
                # still valid for longer than the command may take: only we may change it
                unexpired = self._valid_until - time.monotonic() > LEASE_COMMAND_TIMEOUT_S
                try:
                    self._once(lease.release, self.shell, self.host, self.state_dir, self.holder,
                               locked=not unexpired)
                except InfraError:
                    pass
                self.taken, self._valid_until = {}, 0.0

    def _start_renewing(self) -> None:
        if self._thread is None:
            # A stop of its own for each renewal thread: one that outlived its release (stuck
            # on a dead host) must never be woken again by a later take.
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._renew_forever, args=(self._stop,),
                                            name=f"lease {self.host}", daemon=True)
            self._thread.start()

    def _take(self, steal: str = "") -> dict[str, str]:
        sent = time.monotonic()
        taken = lease.take(self.shell, self.host, self.state_dir, self.holder, self._ttl, steal=steal)
        self._valid_until = sent + self._ttl
        return taken

    def _once(self, call, *args, **kw):
        """The lease's shell stays connected from case to case (one SSH handshake per host,
        not per case); a connection the host's reboot broke is made again, once."""
        try:
            return call(*args, **kw)
        except RetryableInfraError:
            self.shell.close()
            return call(*args, **kw)

    def _renew_forever(self, stop: threading.Event) -> None:
        pause = LEASE_RENEW_S
        while not stop.wait(pause):
            with self._renewing:
                if stop.is_set() or not self.taken:
                    return          # released meanwhile: a renewal now would take the lease back
                try:
                    self._take()
                    pause = LEASE_RENEW_S
                except InfraError:
                    # The host is rebooting: the TTL covers it. Tried again soon, so that the
                    # connection is made again in the background once it is back, not by the
                    # next case or the release.
                    self.shell.close()
                    pause = LEASE_RENEW_RETRY_S


def case_budget(case: Case) -> float:
    """How long the lease must hold for one case without renewal: all its deadlines (the
    host may be dark for the panic, dump, wedge and NMI ones) and one renewal period's TTL."""
    return sum(float(v) for v in case.deadlines.values()) + LEASE_TTL_S
