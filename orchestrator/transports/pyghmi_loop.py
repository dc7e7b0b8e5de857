"""Process-wide pyghmi plumbing shared by ``ipmi.py`` (power) and ``sol.py`` (console).

pyghmi 1.6.19 runs every IPMI session of a process on one event loop: packets are only
processed by threads that call ``Session.wait_for_rsp`` or a synchronous command. The
pattern that held 100 BMCs (shared/reference/pyghmi-concurrency.md):

- credentials as **bytes**, so a Console and a Command to one BMC share one session
  (str credentials leave a stale registry entry that hangs the next login for ever);
- one daemon pump thread calling ``Session.wait_for_rsp(0.1)``, with a guard against the
  busy loop pyghmi falls into while a keepalive is deferred on a dead BMC;
- blocking ``Command`` calls from ordinary worker threads, whose waits for their reply are
  capped so the pump taking their reply costs ms, not a second (``_install_patches``).

Also here: the per-BMC command gate (``min_command_interval``: some BMCs crash when polled
too fast, and the console probe and power calls must count together) and the pyghmi ->
InfraError mapping.

Sessions are never logged out: one live session per BMC is shared by every later
IpmiPower/SolConsole of the process (a logout followed at once by a new login from the
same UDP port went unanswered by the lab BMC in 1 of 3 tries).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pyghmi.exceptions
from pyghmi.ipmi.private import session as ipmi_session

from orchestrator.config.model import BmcConfig
from orchestrator.errors import FatalInfraError, InfraError, RetryableInfraError
from orchestrator.errors import UnsupportedOperation

log = logging.getLogger(__name__)

PUMP_WAIT = 0.1             # seconds per wait_for_rsp; bounds how late a keepalive/retry runs
SPIN_GUARD = 0.001          # a wait_for_rsp shorter than this may not have waited at all;
SPIN_BACKOFF = 0.005        # if a pyghmi deadline is overdue too, it spins: yield this long
DIRECTED_WAIT_CAP = 0.05    # longest sleep of a command between looks at its reply
IO_WAIT_FLOOR = 0.01        # shortest sleep of a wait (packets still wake it at once)
PYGHMI_TICK = 1 / os.sysconf("SC_CLK_TCK")   # resolution of pyghmi's clock (os.times)
NUDGE_SLACK = 0.5           # wake pyghmi's I/O thread only if it would sleep this much longer

# pyghmi reports authentication problems only as message text.
_AUTH_FAILURE_TEXTS = ("Incorrect password", "Unauthorized name", "Unauthorized role",
                       "Invalid RAKP4 integrity", "privelege level", "privilege level",
                       "Invalid username")
# Completion codes meaning "this BMC does not do that" (not "try again").
UNSUPPORTED_CODES = {0xC1: "invalid command", 0xCC: "invalid data field",
                     0xD5: "not supported in present state", 0xD4: "insufficient privilege"}

BmcKey = tuple[str, int]

_pump_thread: threading.Thread | None = None
_registry_lock = threading.Lock()
_gates: dict[BmcKey, "CommandGate"] = {}
_next_nudge = 0.0


def bmc_key(cfg: BmcConfig) -> BmcKey:
    return (cfg.address, cfg.port)


def bmc_credentials(cfg: BmcConfig) -> tuple[bytes, bytes]:
    """(userid, password) as bytes: str credentials break pyghmi's session sharing."""
    return cfg.user.encode(), cfg.password.resolve().encode()


def _pyghmi_deadline_overdue(now: float) -> bool:
    """True when pyghmi's wait_for_rsp will return at once: a retry or keepalive deadline
    has passed (a keepalive stays overdue while its session is busy in a command)."""
    sessions = ipmi_session.Session
    pending = list(sessions.keepalive_sessions.values()) + list(sessions.waiting_sessions.values())
    return any(entry.get("timeout", float("inf")) <= now for entry in pending)


def _pump_forever() -> None:
    while True:
        started = time.monotonic()
        try:
            ipmi_session.Session.wait_for_rsp(PUMP_WAIT)
        except Exception:  # a callback's bug must not stop every BMC's I/O
            log.exception("pyghmi event loop iteration failed")
        # A quick return is normal when packets arrive; it is a spin only while a deadline
        # stays overdue (a keepalive deferred on a session stuck in a command to a dead BMC:
        # _defer_busy_keepalives now prevents that, this stays as a safety net).
        now = time.monotonic()
        if now - started < SPIN_GUARD and _pyghmi_deadline_overdue(now):
            time.sleep(SPIN_BACKOFF)


def _defer_busy_keepalives() -> None:
    """Push the overdue keepalive of a session busy in a command PUMP_WAIT ahead.

    pyghmi defers such a keepalive until the command ends, but leaves its deadline in the
    past, so every ``wait_for_rsp`` (the pump's, and a re-login's own wait loop) computes
    a zero timeout and returns at once for as long as the command waits on a dead BMC
    (up to ~20 s). Re-checked every PUMP_WAIT instead, the keepalive runs at most that
    much later than pyghmi would run it; nothing else changes."""
    now = ipmi_session._monotonic_time()
    with ipmi_session.util.protect(ipmi_session.KEEPALIVE_SESSIONS):
        for session, entry in list(ipmi_session.Session.keepalive_sessions.items()):
            if entry["timeout"] <= now and session._isincommand():
                entry["timeout"] = now + PUMP_WAIT


def _lazy_io_wait(timeout, myaddr=None, evq=None):
    """pyghmi's ``_io_wait`` without the wake-up storm (see _install_patches)."""
    if myaddr is not None and timeout > DIRECTED_WAIT_CAP:
        timeout = DIRECTED_WAIT_CAP
    timeout = max(timeout, IO_WAIT_FLOOR)
    evt = threading.Event()
    if evq is not None:
        evq.append(evt)
    now = ipmi_session._monotonic_time()
    # pyghmi's clock (os.times) moves in ticks, and its I/O thread spins in select(0) until
    # the next tick when a deadline equals "now" exactly (it clears only deadlines < now):
    # measured ~12k select/s while two commands waited on a dead BMC. Mid-tick never equals.
    ticks = math.ceil((now + timeout) / PYGHMI_TICK)
    ipmi_session.ioqueue.append(((ticks + 0.5) * PYGHMI_TICK, evt, myaddr))
    global _next_nudge
    if ipmi_session.selectdeadline > now + timeout + NUDGE_SLACK and now >= _next_nudge:
        # the I/O thread would see this waiter only much later: let it pick up the queue
        # (rate-limited, so nudges can never feed each other)
        _next_nudge = now + NUDGE_SLACK
        sock = ipmi_session.iosockets[0]
        sock.sendto(b"\x01", (ipmi_session.myself, sock.getsockname()[1]))
    evt.wait(timeout)


def _install_patches() -> None:
    """Patch pyghmi's registry locks, its waits and its deferred keepalives (idempotent).

    One lock: pyghmi takes its registry locks in opposite orders on two paths. The pump's
    ``wait_for_rsp`` holds WAITING_SESSIONS while a timed-out session marks itself broken,
    which takes KEEPALIVE_SESSIONS; a command's ``send_payload`` holds KEEPALIVE_SESSIONS
    while ``_xmit_packet`` takes WAITING_SESSIONS. Seen here: a console closed while its BMC
    had been frozen left both threads waiting on each other for ever (a test run hung in
    SolConsole.close). Both are RLocks only ever held briefly, so one shared RLock removes
    the inversion at the cost of nothing measurable.

    Waits: pyghmi's ``_io_wait`` leaves a waiter's deadline to its I/O thread, sending it a
    wake-up datagram whenever the deadline is sooner than the thread's select() deadline
    (always so while that thread is between two select() calls). The I/O thread wakes
    *every* waiter without an address (the pump's, and a command's while its session
    re-logs in: ``_initsession`` clears ``sockaddr``) on *any* return of select(), that
    wake-up datagram included, so two such waiters wake each other without end. Worst
    once a re-login has spent its retries: the command loops on its expired deadline until
    its overall timeout, each loop a datagram that wakes the pump and back; one frozen BMC
    with a console and a polled power session: 60-120 % of a core for ~16 s, 49 % over the
    first 40 s. Here a waiter times its own deadline (``Event.wait(timeout)`` is a lazy wait
    without eventlet), sleeps at least IO_WAIT_FLOOR (one tick of pyghmi's clock), and the
    I/O thread still wakes it the moment a packet arrives, so latency is unchanged; the
    datagram is sent only when that thread would not look at its queue for a while, at most
    every NUDGE_SLACK. Measured after: 0.4 % over those 40 s, at most 0.9 % in any second.

    A command sleeps until the next packet from its BMC or its retry timer (0.5-1 s). When
    another thread (the pump) processes its reply first, no packet follows and it sleeps
    out the whole timer: 1-4 % of get_power calls took 0.5-1 s on loopback. pyghmi's wait
    loops recompute their deadline after any wake-up, so waking every DIRECTED_WAIT_CAP
    cuts that tail to ~60 ms."""
    ipmi_session.WAITING_SESSIONS = ipmi_session.KEEPALIVE_SESSIONS
    if getattr(ipmi_session._io_wait, "orchestrator_patched", False):
        return
    _lazy_io_wait.orchestrator_patched = True
    ipmi_session._io_wait = _lazy_io_wait
    original_wait_for_rsp = ipmi_session.Session.wait_for_rsp.__func__

    def wait_for_rsp(cls, timeout=None, callout=True):
        _defer_busy_keepalives()
        return original_wait_for_rsp(cls, timeout, callout)

    ipmi_session.Session.wait_for_rsp = classmethod(wait_for_rsp)


def ensure_pump() -> None:
    """Start the process-wide pump thread once (daemon: it never blocks interpreter exit)."""
    global _pump_thread
    with _registry_lock:
        _install_patches()
        if _pump_thread is None or not _pump_thread.is_alive():
            _pump_thread = threading.Thread(target=_pump_forever, name="pyghmi-pump", daemon=True)
            _pump_thread.start()


class CommandGate:
    """Spaces commands to one BMC by ``min_command_interval``, whoever sends them."""

    def __init__(self, interval: float):
        self.interval = interval
        self._lock = threading.Lock()
        self._last_end = float("-inf")

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.interval <= 0:
            yield
            return
        with self._lock:
            pause = self._last_end + self.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)       # rate limiting, not a wait for a condition
            try:
                yield
            finally:
                self._last_end = time.monotonic()


def command_gate(cfg: BmcConfig) -> CommandGate:
    with _registry_lock:
        gate = _gates.get(bmc_key(cfg))
        if gate is None or gate.interval < cfg.min_command_interval:
            gate = _gates[bmc_key(cfg)] = CommandGate(cfg.min_command_interval)
        return gate


def is_auth_failure(exc: BaseException) -> bool:
    return any(text in str(exc) for text in _AUTH_FAILURE_TEXTS)


def infra_error(exc: BaseException, cfg: BmcConfig, action: str) -> InfraError | UnsupportedOperation:
    """Map a pyghmi/socket failure of ``action`` to the error the caller should raise."""
    where = f"BMC {cfg.address}:{cfg.port}: {action}"
    code = getattr(exc, "ipmicode", 0)
    if code in UNSUPPORTED_CODES:
        return UnsupportedOperation(f"{where}: {UNSUPPORTED_CODES[code]} ({exc})")
    if is_auth_failure(exc):
        return FatalInfraError(f"{where}: authentication refused: {exc}")
    if isinstance(exc, (pyghmi.exceptions.InvalidParameterValue, socket.gaierror)):
        return FatalInfraError(f"{where}: {exc}")
    detail = str(exc) if str(exc) not in ("", "None") else f"no answer ({type(exc).__name__})"
    return RetryableInfraError(f"{where}: {detail}")
