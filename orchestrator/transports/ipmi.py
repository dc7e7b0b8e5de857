"""Chassis power through a BMC, over pyghmi's IPMI client (``PowerProtocol``).

Many ``IpmiPower`` objects (one per host, each used from that host's cycle thread) live in
one process and share pyghmi's event loop; see ``pyghmi_loop`` for why credentials are
bytes and who pumps the loop. A call against a dead BMC blocks for pyghmi's own retry
budget (up to about 30 s: retries, then a re-login) and then raises
``RetryableInfraError``.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

from pyghmi.exceptions import IpmiException
from pyghmi.ipmi.command import Command

from orchestrator.config.model import BmcConfig
from orchestrator.errors import InfraError
from orchestrator.transports import pyghmi_loop
from orchestrator.protocols.power import PowerProtocol
from orchestrator.errors import UnsupportedOperation
from orchestrator.tunables import CYCLE_FALLBACK_OFF_POLLS

T = TypeVar("T")

# IPMI chassis control directives (IPMI 2.0 table 28-4).
CHASSIS_POWER_CYCLE = 2
CHASSIS_HARD_RESET = 3
CHASSIS_PULSE_DIAG = 4


class IpmiPower(PowerProtocol):
    """Power control of one host's BMC. Thread-safe; calls to one BMC are serialized."""

    def __init__(self, cfg: BmcConfig):
        self.cfg = cfg
        self._userid, self._password = pyghmi_loop.bmc_credentials(cfg)
        self._gate = pyghmi_loop.command_gate(cfg)
        self._lock = threading.Lock()
        self._command: Command | None = None
        pyghmi_loop.ensure_pump()

    # -- PowerProtocol ------------------------------------------------------------------

    def status(self) -> str:
        return self._call("get power", lambda cmd: cmd.get_power()["powerstate"])

    def on(self) -> None:
        # set_power reads the state first and sends nothing when it is already reached
        self._call("power on", lambda cmd: cmd.set_power("on"))

    def off(self) -> None:
        self._call("power off", lambda cmd: cmd.set_power("off"))

    def reset(self) -> None:
        self._chassis_control("reset", CHASSIS_HARD_RESET)

    def cycle(self) -> None:
        """Chassis power cycle; an off chassis is just powered on (many BMCs refuse to
        cycle it), and a BMC without the cycle directive gets off, wait for off, on."""
        if self.status() == "off":
            self.on()
            return
        try:
            self._chassis_control("power cycle", CHASSIS_POWER_CYCLE)
        except UnsupportedOperation:
            self._call("power off (cycle)",
                       lambda cmd: cmd.set_power("off", wait=CYCLE_FALLBACK_OFF_POLLS))
            self.on()

    def nmi(self) -> None:
        """Pulse the diagnostic interrupt; ``UnsupportedOperation`` if the BMC refuses it."""
        self._chassis_control("pulse diag (NMI)", CHASSIS_PULSE_DIAG)

    def close(self) -> None:
        """Drop this object's Command; the shared session stays logged in for the next
        user (pyghmi_loop explains why), and the next call here logs in again if needed."""
        with self._lock:
            self._command = None

    # -- internals ----------------------------------------------------------------------

    def raw(self, action: str, netfn: int, command: int, data: bytes = b"") -> tuple[int, bytes]:
        """One raw IPMI request on this BMC's session (SEL, OEM commands): (completion code,
        reply data). A completion code is the BMC's answer, not a transport failure."""
        def request(cmd: Command) -> tuple[int, bytes]:
            try:
                reply = cmd.xraw_command(netfn=netfn, command=command, data=list(data))
            except IpmiException as error:
                if getattr(error, "ipmicode", 0):
                    return error.ipmicode, b""
                raise
            return 0, bytes(reply["data"])
        return self._call(action, request)

    def _chassis_control(self, action: str, directive: int) -> None:
        self._call(action, lambda cmd: cmd.xraw_command(netfn=0, command=2, data=[directive]))

    def _call(self, action: str, operation: Callable[[Command], T]) -> T:
        """Run ``operation`` on a logged-in Command, mapping every failure to our errors."""
        with self._lock, self._gate.slot():
            try:
                return operation(self._logged_in_command())
            except (InfraError, UnsupportedOperation):
                raise
            except Exception as exc:  # pyghmi raises IpmiException, socket errors, ValueError
                self._forget_broken_session()
                raise pyghmi_loop.infra_error(exc, self.cfg, action) from exc

    def _logged_in_command(self) -> Command:
        if self._command is None:
            # Blocking login; with bytes credentials this joins a session a SolConsole to
            # the same BMC already holds.
            login = lambda: Command(bmc=self.cfg.address, userid=self._userid,  # noqa: E731
                                    password=self._password, port=self.cfg.port)
            try:
                self._command = login()
            except AttributeError:
                # pyghmi race: the pump thread can mark a failing login broken before the
                # reason (errormsg) is set, and pyghmi then trips over the missing attribute.
                # A second attempt fails with the real reason (or succeeds).
                self._command = login()
        return self._command

    def _forget_broken_session(self) -> None:
        # A broken pyghmi session never heals; the next call logs in afresh.
        if self._command is not None and self._command.ipmi_session.broken:
            self._command = None
