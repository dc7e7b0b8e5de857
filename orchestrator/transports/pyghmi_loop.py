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
        # stays overdue (a keepalive deferred on a session stuck in a command to a dead BMC).
        now = time.monotonic()
        if now - started < SPIN_GUARD and _pyghmi_deadline_overdue(now):
            time.sleep(SPIN_BACKOFF)


def _install_patches() -> None:
    """Make pyghmi's two session registries share one lock, and cap a command's wait for its
    own reply (idempotent).

    One lock: pyghmi takes its registry locks in opposite orders on two paths. The pump's
    ``wait_for_rsp`` holds WAITING_SESSIONS while a timed-out session marks itself broken,
    which takes KEEPALIVE_SESSIONS; a command's ``send_payload`` holds KEEPALIVE_SESSIONS
    while ``_xmit_packet`` takes WAITING_SESSIONS. Seen here: a console closed while its BMC
    had been frozen left both threads waiting on each other for ever (a test run hung in
    SolConsole.close). Both are RLocks only ever held briefly, so one shared RLock removes
    the inversion at the cost of nothing measurable.

    A command in raw_command sleeps until the next packet from its BMC or its retry timer
    (0.5-1 s). When another thread (the pump) processes its reply first, no packet follows
    and it sleeps out the whole timer: 1-4 % of get_power calls took 0.5-1 s on loopback.
    pyghmi's wait loops recompute their deadline after any wake-up, so waking every
    DIRECTED_WAIT_CAP cuts that tail to ~60 ms."""
    ipmi_session.WAITING_SESSIONS = ipmi_session.KEEPALIVE_SESSIONS
    original_io_wait = ipmi_session._io_wait
    if getattr(original_io_wait, "orchestrator_patched", False):
        return

    def capped_io_wait(timeout, myaddr=None, evq=None):
        if myaddr is not None and timeout > DIRECTED_WAIT_CAP:
            timeout = DIRECTED_WAIT_CAP
        return original_io_wait(timeout, myaddr, evq)

    capped_io_wait.orchestrator_patched = True
    ipmi_session._io_wait = capped_io_wait


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
