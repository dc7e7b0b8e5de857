"""An IPMI BMC for one virtual lab machine: pyghmi's ``Bmc`` over a QEMU process.

The BMC OWNS its machine, as a real BMC owns the board's power rail:

    IPMI chassis control    what happens to QEMU
    on (1)                  cold boot: a new QEMU process (a stale 'shutdown' one is replaced)
    off (0)                 hard off: the QEMU process is gone
    cycle (2)               off, then on (also from off: a useful "make it boot" button)
    reset (3)               QMP system_reset; power stays on (QEMU itself is replaced: cold_reboot.py)
    diag (4)                QMP inject-nmi; 0xD5 where QEMU has none (aarch64 -M virt)
    soft (5)                QMP system_powerdown (ACPI button / arm64 GPIO poller)

Power is "on" while a QEMU process exists whose QMP status is not 'shutdown' — a panicked
or paused guest is still powered, as a hung server is. A BMC whose QEMU died reports off.

SOL streams ``serial.sock`` (via ``SerialConsoleReader``) to the client; console.log
always gets every byte. A SOL "generate break" becomes a BREAK on the guest's UART
(telnet.py), so BREAK + a SysRq key stands in for the NMI that aarch64 -M virt lacks. All
pyghmi calls run in the thread that runs ``serve()`` (sol-and-ghes.md F4); the reader
thread only buffers and wakes that loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import BinaryIO

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.session as ipmisession

from orchestrator.errors import UnsupportedOperation
from orchestrator.vlab.bmc import einj_doorbell
from orchestrator.vlab.bmc import firmware_requests, pyghmi_server_fixes, raw_commands, sel_commands  # noqa: F401 (registers)
from orchestrator.vlab.bmc.kcs_link import KcsLink
from orchestrator.vlab.bmc.machine_config import BmcConfig, Machine
from orchestrator.vlab.bmc.sol_bridge import SerialConsoleReader, udp_waker

log = logging.getLogger(__name__)

CC_OK = 0x00
CC_NOT_IN_PRESENT_STATE = 0xD5   # "command not supported in present state" (off, or no NMI)
CC_UNSPECIFIED = 0xFF
POWERED_OFF_STATES = frozenset({'off', 'shutdown'})
QMP_FAILURE_GRACE_SECONDS = 0.5  # bounded: a BMC answers promptly even with a sick QEMU
LOOP_TICK_SECONDS = 0.2          # bound on how late a SOL retransmit can be noticed
DUPLICATE_WINDOW_SECONDS = 10.0  # a client retransmit of a slow power command must not act twice


class QemuBmc(pyghmi_bmc.Bmc):
    def __init__(self, config: BmcConfig, machine: Machine):
        pyghmi_server_fixes.install()
        super().__init__({config.user: config.password}, port=config.port,
                         address=config.address)
        # pyghmi keeps the port it was given; with port 0 the real one is needed both for
        # routing replies (bmc_handlers[client][port]) and for the SOL port it advertises.
        self.port = self.serversocket.getsockname()[1]
        self.config = config
        self.machine = machine
        self.sol_idle_timeout = config.sol_idle_timeout
        self.boot_device = 'default'
        self.iohandler = self._from_sol_client
        self._trace: BinaryIO | None = open(config.sol_trace, 'ab') if config.sol_trace else None
        self.console = SerialConsoleReader(config.serial_socket, config.console_log,
                                           udp_waker(self.port), trace=self._trace)
        self._last_control: tuple[tuple, float, int] | None = None
        # the platform firmware behind the guest's EINJ table, if it has one
        self.einj = einj_doorbell.for_machine(machine)
        # a guest reboot replaces the QEMU process and its serial socket (cold_reboot.py)
        machine.on_cold_reboot = self._reconnect_soon
        self.kcs = KcsLink.attach(self, config.machine_dir)   # in-band IPMI + SEL device (kcs_link.py)

    # --- power --------------------------------------------------------------------------
    def powered_on(self) -> bool:
        if not self.machine.is_running():
            return False
        try:
            return self.machine.status() not in POWERED_OFF_STATES
        except Exception as error:
            # Mostly a QEMU that is dying right now (killed, crashed): QMP resets before the
            # process is reaped. Give it a bounded moment to go; if it stays, it is powered.
            log.warning('QMP status failed (%s); judging power by the process', error)
            deadline = time.monotonic() + QMP_FAILURE_GRACE_SECONDS
            while self.machine.is_running() and time.monotonic() < deadline:
                time.sleep(0.02)
            return self.machine.is_running()

    def get_power_state(self) -> str:
        return 'on' if self.powered_on() else 'off'

    def power_on(self) -> int:
        if self.powered_on():
            return CC_OK
        if self.machine.is_running():   # a guest that powered itself down (-no-shutdown)
            self.machine.stop()
        self.machine.start()
        self._reconnect_soon()
        return CC_OK

    def power_off(self) -> int:
        if self.machine.is_running():
            self.machine.stop()
        return CC_OK

    def power_cycle(self) -> int:
        self.power_off()
        self.machine.start()
        self._reconnect_soon()
        return CC_OK

    def _reconnect_soon(self) -> None:
        """A new QEMU process: its console and EINJ doorbell sockets are new too."""
        self.console.reconnect_soon()
        if self.einj is not None:
            self.einj.reconnect_soon()

    def power_reset(self) -> int:
        if not self.powered_on():
            return CC_NOT_IN_PRESENT_STATE
        self.machine.reset()
        return CC_OK

    def pulse_diag(self) -> int:
        if not self.powered_on():
            return CC_NOT_IN_PRESENT_STATE
        try:
            self.machine.inject_nmi()
        except UnsupportedOperation as error:
            log.info('diag interrupt refused: %s', error)
            return CC_NOT_IN_PRESENT_STATE
        return CC_OK

    def power_shutdown(self) -> int:
        if not self.powered_on():
            return CC_NOT_IN_PRESENT_STATE
        self.machine.powerdown()
        return CC_OK

    def control_chassis(self, request, session) -> None:
        """Chassis Control, with retransmit suppression: a cold boot can outlast the
        client's 0.5-1 s retry timer, and a retransmitted 'cycle' must not cycle twice."""
        data = bytes(request['data'])
        key = (session.sockaddr, id(session), getattr(session, 'seqlun', None), data)
        now = time.monotonic()
        last = self._last_control
        if last is not None and last[0] == key and now - last[1] < DUPLICATE_WINDOW_SECONDS:
            return session.send_ipmi_response(code=last[2])
        actions = {0: self.power_off, 1: self.power_on, 2: self.power_cycle,
                   3: self.power_reset, 4: self.pulse_diag, 5: self.power_shutdown}
        action = actions.get(data[0] if data else -1)
        if action is None:
            code = 0xCC  # invalid data field
        else:
            code = self._run_power_action(action)
        self._last_control = (key, time.monotonic(), code)
        session.send_ipmi_response(code=code)

    def _run_power_action(self, action) -> int:
        log.info('chassis control: %s', action.__name__)
        try:
            return action()
        except Exception:
            log.exception('%s failed', action.__name__)
            return CC_UNSPECIFIED

    # --- boot device, identity -------------------------------------------------------------
    def get_boot_device(self) -> str:
        return self.boot_device

    def set_boot_device(self, bootdevice) -> None:
        # Stored and reported only: the lab boots -kernel directly; clients that set a boot
        # device before a power cycle (as on real servers) must still see it kept.
        self.boot_device = bootdevice
        log.info('boot device set to %s', bootdevice)

    def is_active(self) -> bool:
        return True   # SOL can be activated while the host is off, as on a real BMC

    def cold_reset(self) -> int:
        return CC_OK  # the BMC restarting itself would drop the machine it owns: a no-op

    def log_event(self, message: str) -> None:
        log.info('%s', message)

    def handle_raw_request(self, request, session):
        # firmware features register their requests in raw_commands (firmware_requests: the
        # emulated RAS firmware's error reports); everything else is pyghmi's
        if not raw_commands.dispatch(self, request, session):
            super().handle_raw_request(request, session)

    # --- SOL -----------------------------------------------------------------------------
    def _from_sol_client(self, data) -> None:
        if isinstance(data, dict):
            if data.get('break'):   # SOL "generate break" -> a BREAK on the guest's UART
                log.info('SOL break -> serial BREAK %s', 'sent' if self.console.send_break() else 'dropped')
                return
            log.info('SOL event: %s', data)
            return
        self.console.write(bytes(data))

    def _forward_console(self) -> None:
        data = self.console.take()
        sol = self.sol
        if data and sol is not None and self.activated and not sol.broken:
            sol.send_data(data)

    # --- main loop ---------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        """Run the BMC until ``stop`` is set. Every pyghmi call happens in this thread."""
        self.console.start()
        if self.einj is not None:
            self.einj.start()
        self.kcs.start()
        log.info('BMC listening on %s:%d for %s', self.config.address, self.port,
                 self.config.machine_dir.name)
        while not stop.is_set():
            started = time.monotonic()
            try:
                ipmisession.Session.wait_for_rsp(LOOP_TICK_SECONDS)
                self._forward_console()
                if self.sol is not None:
                    self.sol.service_retransmits()
            except Exception:
                # One bad packet or a pyghmi server-side bug must cost that request, not the
                # BMC: its death would power the machine off (seen: pyghmi_server_fixes F6).
                log.exception('IPMI packet handling failed; the BMC carries on')
            if time.monotonic() - started < 0.0002:
                time.sleep(0.0005)  # pyghmi can return at once when a deadline is overdue

    def shutdown(self) -> None:
        """Stop the console reader and the machine: nothing of this BMC stays running."""
        self.console.stop()
        if self.einj is not None:
            self.einj.stop()
        self.kcs.stop()
        try:
            if self.machine.is_running():
                self.machine.stop()
        finally:
            if self._trace is not None:
                self._trace.close()
