"""The host's serial console over IPMI Serial-over-LAN (``ConsoleProtocol``), via pyghmi.

Raw SOL bytes are appended unmodified to ``raw_log``; a ``ConsoleTranscript``
(console_transcript.py) turns them into cleaned lines that ``wait_for`` sees the moment
their newline arrives. pyghmi's Console never comes back by itself once it breaks (BMC restart, SOL
taken over, session lost), so a keeper thread per console re-creates it with backoff.

Dead-console detection: pyghmi notices a dead BMC only through its SOL keepalive, 30-45 s
late, and after a quick BMC restart it silently re-logs the shared session, leaving SOL
dead with no event at all (pyghmi-concurrency.md part 4). So the keeper itself probes the
SOL owner (Get Payload Instance Info, the same command pyghmi's keepalive sends) every
``probe_interval``: an owner other than our session, a new session id, or a broken session
means dead. ``healthy()`` also turns false when nothing has proven the console alive (a
probe answer or console bytes) for ``dead_after`` seconds, which covers a BMC that stopped
answering while the probe is still blocked in pyghmi's retries.

``send_break`` sends SOL's serial BREAK + a key (magic SysRq: the crash request of hosts
without NMI); the lab BMC passes it to QEMU's UART (vlab/bmc/telnet.py).
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from pathlib import Path
from typing import Callable

from pyghmi.ipmi.console import Console

from orchestrator.config.model import BmcConfig
from orchestrator.errors import RetryableInfraError
from orchestrator.transports import pyghmi_loop
from orchestrator.protocols.console import ConsoleLine, ConsoleProtocol
from orchestrator.transports.console_transcript import ConsoleTranscript
from orchestrator.tunables import SOL_RECONNECT_BACKOFF

log = logging.getLogger(__name__)

GET_PAYLOAD_INSTANCE_INFO = {"netfn": 6, "command": 0x4B, "data": (1, 1)}  # SOL, instance 1


class _SettlingConsole(Console):
    """pyghmi's Console plus the callback it lacks: "activation finished, either way"."""

    def __init__(self, *args, on_settled: Callable[[], None], **kwargs):
        self._on_settled = on_settled      # set first: activation may run inside __init__
        super().__init__(*args, **kwargs)

    def _got_session(self, response):
        super()._got_session(response)
        if self.connected or self.broken:
            self._on_settled()


class SolConsole(ConsoleProtocol):
    """SOL console of one host, kept alive in the background until ``close()``."""

    def __init__(self, cfg: BmcConfig, *, raw_log: Path, probe_interval: float = 1.0,
                 dead_after: float | None = None, activation_timeout: float = 15.0):
        self.cfg = cfg
        self.probe_interval = max(probe_interval, cfg.min_command_interval)
        self.dead_after = dead_after if dead_after is not None else 3 * self.probe_interval
        self.activation_timeout = activation_timeout
        self.last_failure = ""              # why the console last died (for error messages)
        self._userid, self._password = pyghmi_loop.bmc_credentials(cfg)
        self._gate = pyghmi_loop.command_gate(cfg)
        self._transcript = ConsoleTranscript()
        self._raw_lock = threading.Lock()
        raw_log.parent.mkdir(parents=True, exist_ok=True)
        self._raw = open(raw_log, "ab", buffering=0)   # unbuffered: a crash loses nothing
        self._health = threading.Condition()
        self._console: _SettlingConsole | None = None
        self._session = None                # the pyghmi Session the live console rides on
        self._session_id = None
        self._generation = 0
        self._failure: str | None = None    # set by pyghmi's error callback
        self._last_alive = float("-inf")
        self._event = threading.Event()     # activation settled, a failure, or close()
        self._stop = threading.Event()
        pyghmi_loop.ensure_pump()
        self._keeper = threading.Thread(target=self._keep_alive, daemon=True,
                                        name=f"sol-{cfg.address}:{cfg.port}")
        self._keeper.start()

    # -- ConsoleProtocol ----------------------------------------------------------------

    def mark(self) -> int:
        return self._transcript.mark()

    def lines(self, since: int = 0) -> list[ConsoleLine]:
        return self._transcript.lines(since)

    def wait_for(self, pattern: re.Pattern[str], *, since: int, timeout: float) -> ConsoleLine | None:
        return self._transcript.wait_for(pattern, since=since, timeout=timeout)

    def healthy(self) -> bool:
        session = self._session
        return (session is not None and not session.broken and session.sessionid == self._session_id
                and time.monotonic() - self._last_alive < self.dead_after)

    def wait_until_healthy(self, timeout: float) -> bool:
        """Block until the console is (re-)established; False on timeout."""
        with self._health:
            return self._health.wait_for(self.healthy, timeout)

    def send_break(self, then: str = "") -> None:
        """SOL's "generate break" (operation bit 4 of a SOL data packet, ipmitool's ``~B``),
        then ``then`` typed. pyghmi's client has it (``Console.send_break``) and sends each
        packet once the previous one is acked, waiting in this thread: the key cannot
        overtake the break. Raises ``RetryableInfraError`` when SOL is down or drops."""
        console, generation = self._console, self._generation
        if console is None or not self.healthy():
            raise RetryableInfraError(f"SOL {self.cfg.address}:{self.cfg.port} is down, no break sent: "
                                      f"{self.last_failure or 'not active'}")
        console.send_break()
        if then:
            console.send_data(then.encode())
        if console.broken or (self._failure is not None and generation == self._generation):
            raise RetryableInfraError(f"SOL {self.cfg.address}:{self.cfg.port} dropped while sending a break: "
                                      f"{self._failure or 'session broken'}")

    def close(self) -> None:
        self._stop.set()
        self._event.set()
        self._keeper.join(timeout=2.0)  # it may sit in a pyghmi call to a dead BMC: daemon
        self._drop_console()            # deactivates SOL: the BMC's console is free again
        with self._raw_lock:
            self._raw.close()

    # -- pyghmi callback (runs in the pump or any worker thread: keep it cheap) ----------

    def _on_console_output(self, generation: int, data) -> None:
        if isinstance(data, dict):
            if "error" in data and generation == self._generation:
                self._failure = str(data["error"])
                self._event.set()
            return
        if isinstance(data, str):
            data = data.encode()
        with self._raw_lock:
            if not self._raw.closed:
                self._raw.write(data)
        self._last_alive = time.monotonic()     # bytes flowing prove the console alive
        self._transcript.feed(data)

    # -- keeper thread ------------------------------------------------------------------

    def _keep_alive(self) -> None:
        failures_in_a_row = 0
        while not self._stop.is_set():
            failure = self._activate()
            if failure is None:
                failures_in_a_row = 0
                failure = self._watch()
            else:
                failures_in_a_row += 1
            if self._stop.is_set():
                return
            self.last_failure = failure
            log.info("SOL %s:%d dead: %s", self.cfg.address, self.cfg.port, failure)
            self._drop_console()
            delay = SOL_RECONNECT_BACKOFF[min(failures_in_a_row, len(SOL_RECONNECT_BACKOFF) - 1)]
            self._stop.wait(delay)

    def _activate(self) -> str | None:
        """Create a Console and wait until SOL is active; the failure text otherwise."""
        self._generation += 1
        generation, self._failure = self._generation, None
        self._event.clear()
        try:
            console = _SettlingConsole(
                self.cfg.address, self._userid, self._password,
                lambda data: self._on_console_output(generation, data),
                port=self.cfg.port, force=True,     # take over a SOL a dead client still holds
                on_settled=self._event.set)
        except Exception as exc:  # address resolution, socket errors
            return f"cannot start SOL: {exc}"
        self._console = console
        if not self._event.wait(self.activation_timeout):
            return f"SOL activation took over {self.activation_timeout:.0f} s"
        if self._failure is not None or not console.connected or console.ipmi_session is None:
            return self._failure or "SOL activation failed"
        with self._health:
            self._session, self._session_id = console.ipmi_session, console.ipmi_session.sessionid
            self._last_alive = time.monotonic()
            self._health.notify_all()
        log.info("SOL %s:%d active (session %#x)", self.cfg.address, self.cfg.port, self._session_id)
        return None

    def _watch(self) -> str:
        """Probe until the console is found dead; returns why."""
        self._event.clear()     # from now on it means: a failure was reported, or close()
        while self._failure is None and not self._event.wait(self.probe_interval):
            failure = self._probe()
            if failure is not None:
                return failure
        return self._failure or "closed"

    def _probe(self) -> str | None:
        session = self._session
        if session is None or session.broken:
            return "IPMI session broken"
        try:
            with self._gate.slot():
                response = session.raw_command(**GET_PAYLOAD_INSTANCE_INFO)
        except Exception as exc:  # pyghmi gave up on the BMC
            return f"BMC not answering: {exc}"
        if session.broken or session.sessionid != self._session_id:
            return "BMC session was re-established (BMC restarted?): SOL lost"
        code = response.get("code", 0)
        if code in pyghmi_loop.UNSUPPORTED_CODES:   # a BMC without the query: trust the session
            self._last_alive = time.monotonic()
            return None
        if "error" in response:
            return f"SOL query failed: {response['error']}"
        owner = struct.unpack("<I", bytes(response["data"][:4]))[0]
        if owner != self._session_id:
            return "SOL no longer owned by this session (BMC restarted or taken over)"
        self._last_alive = time.monotonic()
        return None

    def _drop_console(self) -> None:
        console, self._console = self._console, None
        with self._health:
            self._session = None
            self._health.notify_all()
        if console is None:
            return
        try:
            console.close()   # deactivates SOL if the session still works, stops its keepalive
        except Exception as exc:
            log.debug("closing SOL console: %s", exc)
