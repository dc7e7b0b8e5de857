"""The lab BMC without QEMU: power mapping against a stand-in machine, and the real IPMI
wire (ipmitool, pyghmi client) against a BMC process that drives the stand-in.

Run as a script (``python tests/test_vlab_bmc.py serve DIR ARCH``) it is that BMC process.
"""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.errors import UnsupportedOperation  # noqa: E402
from orchestrator.vlab.bmc.chardev_client import shutdown_and_close
from orchestrator.vlab.bmc.server import (CC_NOT_IN_PRESENT_STATE, BmcConfig,  # noqa: E402
                                   QemuBmc)

USER, PASSWORD = 'admin', 'lab-secret'
BOOT_LINES = [b'[    0.000000] Linux version 7.3.4+deb13-cloud-amd64 (stand-in)',
              b'[    0.100000] Command line: console=ttyS0', b'VLAB: ready']
FLOOD_LINES = 3000  # ~300 KB: killed pyghmi's recursive ServerConsole (F4)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll ``predicate`` until it returns a true value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


class StandInConsole:
    """QEMU's ``-chardev socket,server=on,wait=off``: one client; output is dropped while
    nobody is connected; typed lines are echoed, then answered like a shell."""

    def __init__(self, path: Path):
        path.unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.path, self.client, self.typed = path, None, b''
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.client = client
            while chunk := self._recv(client):
                self.typed += chunk
                self.say(chunk, newline=False)
                while b'\r' in self.typed:
                    line, self.typed = self.typed.split(b'\r', 1)
                    self.say(b'\r\nshell: ' + line)
                    if line == b'flood':  # a console flood, like dmesg > /dev/ttyS0
                        for index in range(FLOOD_LINES):
                            self.say(b'flood line %06d ' % index + b'x' * 80)
                        self.say(b'flood done')
            self.client = None

    @staticmethod
    def _recv(client):
        try:
            return client.recv(4096)
        except OSError:
            return b''

    def say(self, data: bytes, newline: bool = True):
        client = self.client
        if client is not None:
            try:
                client.sendall(data + (b'\r\n' if newline else b''))
            except OSError:
                pass

    def close(self):
        # shutdown() first: a bare close() does not wake the thread blocked in recv/accept,
        # so no EOF would reach the BMC (QEMU exiting does send one).
        for sock in (self.server, self.client):  # listener first: no reconnect to a dying console
            shutdown_and_close(sock)
        self.path.unlink(missing_ok=True)


class StandInMachine:
    """Speaks ``QemuMachine``'s API; a 'process' exists between start() and stop()."""

    def __init__(self, machine_dir: Path, arch: str = 'x86_64', with_console: bool = False):
        self.machine_dir, self.arch, self.with_console = machine_dir, arch, with_console
        self.state, self.calls, self.console = 'off', [], None

    def _act(self, name):
        self.calls.append(name)

    def start(self):
        self._act('start')
        self.state = 'running'
        if self.with_console:
            self.console = StandInConsole(self.machine_dir / 'serial.sock')
            threading.Thread(target=self._boot, daemon=True).start()

    def _boot(self):
        console = self.console
        wait_until(lambda: console.client is not None, 5, 'BMC to connect the console')
        for line in BOOT_LINES:
            console.say(line)

    def stop(self):
        self._act('stop')
        self.state = 'off'
        if self.console:
            self.console.close()
            self.console = None

    def is_running(self):
        return self.state != 'off'

    def status(self):
        return self.state

    def reset(self):
        self._act('reset')
        if self.state in ('guest-panicked', 'paused'):
            self.state = 'running'  # QemuMachine.reset resumes a stopped VM
        if self.console:
            self.console.say(b'reset requested')
            threading.Thread(target=self._boot, daemon=True).start()

    def powerdown(self):
        self._act('powerdown')
        self.state = 'shutdown'

    def inject_nmi(self):
        if self.arch == 'aarch64':
            raise UnsupportedOperation('inject-nmi is not supported on aarch64 -M virt')
        self._act('nmi')
        if self.console:
            self.console.say(b'Uhhuh. NMI received for unknown reason 21 on CPU 0.')

    def report_memory_error(self, phys_addr, path, severity):
        if path != {'x86_64': 'mce', 'aarch64': 'ghes'}[self.arch]:
            raise UnsupportedOperation(f'no {path} path on {self.arch}')
        self.calls.append(('report', phys_addr, path, severity))
        if self.console:
            self.console.say(f'firmware: {severity} {path} error at {phys_addr:#x}'.encode())

    def qmp(self, cmd, **args):
        self._act(cmd)
        if cmd == 'cont':
            self.state = 'running'
        return {}


class RecordingSession:
    """Stands in for a pyghmi ServerSession: records the completion codes sent."""

    def __init__(self, seq=0):
        self.sockaddr, self.seqlun, self.codes = ('127.0.0.1', 9), seq, []

    def send_ipmi_response(self, data=(), code=0):
        self.codes.append(code)


def raw(bmc, netfn, command, data):
    session = RecordingSession()
    bmc.handle_raw_request({'netfn': netfn, 'command': command, 'data': list(data)}, session)
    return session.codes[-1]


@pytest.fixture
def unit_bmc(tmp_path):
    """A BMC never served: its methods are called directly. Its UDP socket is left open on
    purpose: pyghmi keeps it in a process-wide select list (closing it breaks later
    pyghmi clients in this process with EBADF)."""
    def make(arch='x86_64'):
        machine = StandInMachine(tmp_path, arch)
        return QemuBmc(BmcConfig(machine_dir=tmp_path, user=USER, password=PASSWORD),
                       machine), machine
    return make


def chassis(bmc, directive, seq=0):
    session = RecordingSession(seq)
    bmc.control_chassis({'data': [directive]}, session)
    return session.codes[-1]


def test_power_mapping_on_off_cycle(unit_bmc):
    bmc, machine = unit_bmc()
    assert bmc.get_power_state() == 'off'
    assert chassis(bmc, 1, seq=1) == 0 and machine.calls == ['start']
    assert bmc.get_power_state() == 'on'
    assert chassis(bmc, 1, seq=2) == 0 and machine.calls == ['start'], 'on while on: no-op'
    assert chassis(bmc, 2, seq=3) == 0 and machine.calls[1:] == ['stop', 'start']
    assert chassis(bmc, 0, seq=4) == 0 and machine.calls[-1] == 'stop'
    assert bmc.get_power_state() == 'off' and not machine.is_running()


def test_retransmitted_cycle_acts_once(unit_bmc):
    bmc, machine = unit_bmc()
    machine.start()
    session = RecordingSession(seq=7)
    for _ in range(2):  # the client's retry of the same request (same seq, same session)
        bmc.control_chassis({'data': [2]}, session)
    assert session.codes == [0, 0] and machine.calls == ['start', 'stop', 'start']


def test_reset_diag_soft_need_power(unit_bmc):
    bmc, machine = unit_bmc()
    assert chassis(bmc, 3, 1) == CC_NOT_IN_PRESENT_STATE
    assert chassis(bmc, 4, 2) == CC_NOT_IN_PRESENT_STATE
    assert chassis(bmc, 5, 3) == CC_NOT_IN_PRESENT_STATE
    assert machine.calls == []
    machine.start()
    assert [chassis(bmc, d, 10 + d) for d in (3, 4)] == [0, 0]
    assert machine.calls[1:] == ['reset', 'nmi']
    assert chassis(bmc, 5, 20) == 0 and bmc.get_power_state() == 'off', 'soft off -> shutdown'
    assert chassis(bmc, 1, 21) == 0 and machine.calls[-2:] == ['stop', 'start'], \
        'power on from a shut-down QEMU cold boots a fresh process'


def test_panicked_guest_is_on_and_reset_runs_it(unit_bmc):
    bmc, machine = unit_bmc()
    machine.start()
    machine.state = 'guest-panicked'
    assert bmc.get_power_state() == 'on'
    assert chassis(bmc, 3, 1) == 0 and machine.calls[-1] == 'reset'
    assert machine.status() == 'running'


def test_aarch64_diag_is_refused_like_a_real_bmc(unit_bmc):
    bmc, machine = unit_bmc('aarch64')
    machine.start()
    assert chassis(bmc, 4, 1) == CC_NOT_IN_PRESENT_STATE
    assert bmc.get_power_state() == 'on'


def test_lost_qemu_reports_off(unit_bmc):
    bmc, machine = unit_bmc()
    machine.start()
    machine.state = 'off'  # the process died under the BMC
    started = time.monotonic()
    assert bmc.get_power_state() == 'off'
    assert time.monotonic() - started < 0.1


def test_dying_qemu_whose_qmp_fails_reports_off_within_a_bound(unit_bmc):
    bmc, machine = unit_bmc()
    machine.start()

    def qmp_reset_by_peer():
        threading.Timer(0.05, lambda: setattr(machine, 'state', 'off')).start()
        raise ConnectionResetError('QMP socket reset')
    machine.status = qmp_reset_by_peer  # killed: QMP resets before the process is reaped
    started = time.monotonic()
    assert bmc.get_power_state() == 'off'
    assert time.monotonic() - started < 0.6


def test_boot_device_is_kept(unit_bmc):
    bmc, _ = unit_bmc()
    bmc.set_boot_device('network')
    assert bmc.get_boot_device() == 'network'


def test_install_is_idempotent():
    from orchestrator.vlab.bmc import pyghmi_server_fixes
    import pyghmi.ipmi.private.serversession as serversession
    pyghmi_server_fixes.install()
    patched = serversession.ServerSession.create_open_session_response
    pyghmi_server_fixes.install()
    assert serversession.ServerSession.create_open_session_response is patched


# --- the IPMI wire, against a BMC process driving the stand-in ------------------------

class PtyProcess:
    """A child on a pseudo-terminal (ipmitool's SOL needs a tty); pexpect is not installed."""

    def __init__(self, argv: list[str]):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.output = b''

    def expect(self, pattern: bytes, timeout: float) -> re.Match:
        deadline, start = time.monotonic() + timeout, len(self.output)
        while not (match := re.compile(pattern).search(self.output, start)):
            remaining = deadline - time.monotonic()
            readable = select.select([self.master], [], [], max(remaining, 0))[0]
            chunk = self._read() if readable else b''
            if remaining <= 0 or (readable and not chunk):
                raise AssertionError(f'{pattern!r} not seen in {timeout} s; '
                                     f'tail: {self.output[-400:]!r}')
            self.output += chunk
        return match

    def _read(self) -> bytes:
        try:
            return os.read(self.master, 65536)
        except OSError:  # EIO: the child exited and closed the tty
            return b''

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            os.close(self.master)


def ipmitool_argv(port: int, *args: str, cipher: str | None = None) -> list[str]:
    suite = ['-C', cipher] if cipher else []
    return ['ipmitool', '-I', 'lanplus', '-H', '127.0.0.1', '-p', str(port), '-U', USER,
            '-P', PASSWORD, *suite, *args]


def ipmitool(port: int, *args: str, cipher: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(ipmitool_argv(port, *args, cipher=cipher), capture_output=True,
                          text=True, timeout=30)


@contextmanager
def stand_in_bmc_process(machine_dir: Path, arch: str = 'x86_64', idle: float = 65):
    log = open(machine_dir / 'bmc.out', 'wb')
    proc = subprocess.Popen([sys.executable, __file__, 'serve', str(machine_dir), arch,
                             str(idle)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (machine_dir / 'bmc.pid').exists() or proc.poll() is not None,
                   15, 'the BMC process to listen')
        assert proc.poll() is None, (machine_dir / 'bmc.out').read_text()
        yield int((machine_dir / 'bmc.port').read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope='module')
def bmc_port(tmp_path_factory):
    with stand_in_bmc_process(tmp_path_factory.mktemp('standin')) as port:
        yield port


@pytest.mark.parametrize('cipher', [None, '3'])
def test_ipmitool_power_commands(bmc_port, cipher):
    def power(*args):
        result = ipmitool(bmc_port, *args, cipher=cipher)
        assert result.returncode == 0, result.stderr
        return result.stdout
    assert 'Chassis Power Control: Down/Off' in power('power', 'off')
    assert power('power', 'status').strip() == 'Chassis Power is off'
    assert 'Up/On' in power('power', 'on')
    assert power('power', 'status').strip() == 'Chassis Power is on'
    assert 'Cycle' in power('power', 'cycle')
    assert 'Reset' in power('power', 'reset')
    assert 'Diag' in power('chassis', 'power', 'diag')
    assert 'Set Boot Device to pxe' in power('chassis', 'bootdev', 'pxe')


def test_ipmitool_sol_shows_reset_and_types(bmc_port):
    assert ipmitool(bmc_port, 'power', 'on').returncode == 0
    sol = PtyProcess(ipmitool_argv(bmc_port, 'sol', 'activate'))
    try:
        sol.expect(rb'SOL Session operational', 10)
        assert 'Reset' in ipmitool(bmc_port, 'power', 'reset').stdout
        sol.expect(rb'Linux version 7\.3\.4.*\n(.*\n)*VLAB: ready', 10)
        sol.send(b'echo typed-through-sol\r')
        sol.expect(rb'shell: echo typed-through-sol', 10)
        sol.send(b'\r~.')
    finally:
        assert sol.close() == 0


def test_pyghmi_client_power_and_console(bmc_port):
    from pyghmi.ipmi.command import Command
    from pyghmi.ipmi.console import Console
    from pyghmi.ipmi.private.session import Session
    credentials = dict(bmc='127.0.0.1', port=bmc_port, userid=USER.encode(),
                       password=PASSWORD.encode())
    command = Command(**credentials)
    assert command.set_power('on', wait=5) in ({'powerstate': 'on'}, {'pendingpowerstate': 'on'})
    received, events = bytearray(), []
    console = Console(iohandler=lambda d: events.append(d) if isinstance(d, dict)
                      else received.extend(d), force=True, **credentials)
    stop = threading.Event()
    pump = threading.Thread(target=lambda: [Session.wait_for_rsp(0.05) for _ in
                                            iter(stop.is_set, True)], daemon=True)
    pump.start()
    try:
        wait_until(lambda: console.activated, 10, 'SOL activation')
        owner = command.raw_command(netfn=6, command=0x4B, data=(1, 1))['data'][:4]
        assert int.from_bytes(owner, 'little') == console.ipmi_session.sessionid  # F2
        command.set_power('reset')
        wait_until(lambda: b'VLAB: ready' in received, 10, 'boot lines over SOL')
        console.send_data(b'pyghmi-typed\r')
        wait_until(lambda: b'shell: pyghmi-typed' in received, 10, 'typed line echoed')
        command.raw_command(netfn=0, command=2, data=(0,))  # sanity: BMC still serving
        assert not events, events
    finally:
        stop.set()
        console.close()


def test_console_flood_arrives_complete_and_bmc_survives(bmc_port):
    from pyghmi.ipmi.command import Command
    from pyghmi.ipmi.console import Console
    from pyghmi.ipmi.private.session import Session
    credentials = dict(bmc='127.0.0.1', port=bmc_port, userid=USER.encode(),
                       password=PASSWORD.encode())
    command = Command(**credentials)
    command.set_power('on', wait=5)
    received = bytearray()
    console = Console(iohandler=lambda d: None if isinstance(d, dict) else received.extend(d),
                      force=True, **credentials)
    stop = threading.Event()
    threading.Thread(target=lambda: [Session.wait_for_rsp(0.05) for _ in
                                     iter(stop.is_set, True)], daemon=True).start()
    try:
        wait_until(lambda: console.activated, 10, 'SOL activation')
        console.send_data(b'flood\r')
        wait_until(lambda: b'flood done' in received, 60, 'the whole flood over SOL')
        lines = re.findall(rb'flood line (\d{6}) x{80}\r\n', bytes(received))
        assert [int(n) for n in lines] == list(range(FLOOD_LINES)), 'lost or mangled bytes'
        assert command.get_power() == {'powerstate': 'on'}
    finally:
        stop.set()
        console.close()


def test_client_relogin_from_the_same_udp_port(bmc_port):
    """pyghmi's client treats a session idle for > ~45 s as expired and logs in again from
    the SAME UDP port; the BMC must then serve a fresh session. (It failed 1 run in 2 while
    the expired session's queued packets crashed pyghmi's server code: F6.)

    Run in a fresh interpreter: pyghmi's sessions are process-global, and a pump thread left by
    other tests would refresh the "expired" session with a keepalive before the re-login."""
    script = f"""
import time
from pyghmi.ipmi.command import Command
from pyghmi.ipmi.private.session import Session
credentials = dict(bmc='127.0.0.1', port={bmc_port}, userid={USER.encode()!r}, password={PASSWORD.encode()!r})
first = Command(**credentials)
assert first.get_power()['powerstate'] in ('on', 'off')
Session.keepalive_sessions[first.ipmi_session]['timeout'] = time.monotonic() - 100
second = Command(**credentials)
assert second.ipmi_session is not first.ipmi_session, 'the expired session was reused'
assert second.ipmi_session.socket is first.ipmi_session.socket, 'not the same UDP port'
assert second.get_power()['powerstate'] in ('on', 'off')
print('relogin ok')
"""
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and 'relogin ok' in done.stdout, done.stderr[-2000:]


def test_stale_sol_owner_is_taken_over(tmp_path):
    from pyghmi.ipmi.command import Command
    with stand_in_bmc_process(tmp_path, idle=2) as port:
        vanished = Command(bmc='127.0.0.1', port=port, userid=USER.encode(),
                           password=PASSWORD.encode())
        assert vanished.raw_command(netfn=6, command=0x48, data=(1, 1, 192, 0, 0, 0))['code'] == 0
        refused = ipmitool(port, 'sol', 'activate')  # within the idle limit: still owned
        assert 'already active' in refused.stdout + refused.stderr

        def takes_over():
            sol = PtyProcess(ipmitool_argv(port, 'sol', 'activate'))
            try:
                sol.expect(rb'SOL Session operational', 5)
                sol.send(b'\r~.')
                return True
            except AssertionError:
                return False
            finally:
                sol.close()
        wait_until(takes_over, 15, 'ipmitool to take over the silent SOL owner', interval=0.5)


if __name__ == '__main__' and sys.argv[1:2] == ['serve']:
    import logging
    from orchestrator.vlab.bmc.process import run_bmc
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    machine_dir = Path(sys.argv[2])
    config = BmcConfig(machine_dir=machine_dir, user=USER, password=PASSWORD,
                       sol_idle_timeout=float(sys.argv[4]))
    run_bmc(config, StandInMachine(machine_dir, sys.argv[3], with_console=True))


def test_firmware_memory_error_request_reaches_the_machine_or_says_why_not(unit_bmc):
    """The OEM "report a memory error" request: the platform-firmware seam of the lab BMC."""
    from orchestrator.transports.ipmi_firmware import encode
    bmc, machine = unit_bmc()
    request = encode(0x1fe10000, 'mce', 'srao')
    assert raw(bmc, 0x30, 0x01, request) == 0xD5            # powered off: nothing raised
    chassis(bmc, 1)
    assert raw(bmc, 0x30, 0x01, request) == 0x00
    assert raw(bmc, 0x30, 0x01, encode(0x2000, 'mce', 'fatal')) == 0x00
    assert raw(bmc, 0x30, 0x01, encode(0x3000, 'ghes', 'fatal')) == 0xC1   # no GHES on this x86 machine
    assert raw(bmc, 0x30, 0x01, b'\x01\x07' + bytes(8)) == 0xCC           # severity out of range
    assert raw(bmc, 0x30, 0x01, b'\x01') == 0xCC
    assert [c for c in machine.calls if c[0] == 'report'] == [
        ('report', 0x1fe10000, 'mce', 'srao'), ('report', 0x2000, 'mce', 'fatal')]
    assert raw(bmc, 0x30, 0x7f, b'') == 0xC1                # unknown OEM command: pyghmi's answer


def test_firmware_error_report_over_ipmi_maps_completion_codes(bmc_port, tmp_path):
    from orchestrator.config.model import BmcConfig as ClientBmc, SecretRef
    from orchestrator.errors import FatalInfraError
    from orchestrator.transports.ipmi import IpmiPower
    from orchestrator.transports.ipmi_firmware import IpmiFirmware
    (tmp_path / 'pw').write_text(PASSWORD)
    power = IpmiPower(ClientBmc(address='127.0.0.1', port=bmc_port, user=USER, password=SecretRef(file=tmp_path / 'pw')))
    firmware = IpmiFirmware(power)
    try:
        power.on()
        firmware.report_memory_error(0x1fe10000, path='mce', severity='srao')
        with pytest.raises(UnsupportedOperation, match='no such error path'):
            firmware.report_memory_error(0x1000, path='ghes', severity='recoverable')
        with pytest.raises(UnsupportedOperation, match='severity'):
            firmware.report_memory_error(0x1000, path='mce', severity='corrected')
        power.off()
        with pytest.raises(FatalInfraError, match='powered off'):
            firmware.report_memory_error(0x1000, path='mce', severity='srao')
    finally:
        power.close()


@pytest.mark.parametrize('desc', ['machine does not provide NMIs',                      # QEMU 11 (RAS machines)
                                  'Injecting an NMI is not supported on this machine'])  # QEMU 7.2 arm virt
def test_a_machine_without_nmi_is_unsupported_so_the_bmc_answers_d5(desc):
    from types import SimpleNamespace
    from orchestrator.vlab.qemu.machine import QemuMachine
    from orchestrator.vlab.qemu.qmp import QmpError

    def refuse(command, **arguments):
        raise QmpError(command, 'GenericError', desc)
    machine = object.__new__(QemuMachine)
    machine.spec, machine.qmp = SimpleNamespace(name='vlab-arm-1', arch='aarch64'), refuse
    with pytest.raises(UnsupportedOperation, match='NMI on vlab-arm-1'):
        machine.inject_nmi()
