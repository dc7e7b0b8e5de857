"""IpmiPower against real loopback BMC processes, plus unit tests of the error mapping."""

from __future__ import annotations

import dataclasses
import signal
import socket
import threading
import time

import pytest
from pyghmi.exceptions import IpmiException

from orchestrator.config.model import BmcConfig, SecretRef
from orchestrator.errors import FatalInfraError, RetryableInfraError
from orchestrator.transports import pyghmi_loop
from orchestrator.errors import UnsupportedOperation
from orchestrator.transports.ipmi import IpmiPower
from test_transport_peers import LoopbackBmc


@pytest.fixture
def power(bmc):
    power = IpmiPower(bmc.bmc_config())
    yield power
    power.close()


# -- against a loopback BMC ----------------------------------------------------------------

def test_power_actions_reach_the_bmc(power):
    assert power.status() == "on"
    power.off()
    assert power.status() == "off"
    power.on()
    assert power.status() == "on"
    power.reset()
    power.nmi()
    power.cycle()
    assert power.status() == "on"


def test_cycle_of_an_off_chassis_powers_it_on(power):
    power.off()
    power.cycle()
    assert power.status() == "on"


def test_nmi_refused_by_the_bmc_is_unsupported(tmp_path):
    peer = LoopbackBmc(tmp_path / "no-nmi", nmi=False)
    power = IpmiPower(peer.bmc_config())
    try:
        with pytest.raises(UnsupportedOperation):
            power.nmi()
        assert power.status() == "on"      # the session survived the refusal
    finally:
        power.close()
        peer.stop()


def test_wrong_password_is_fatal(bmc, tmp_path):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    power = IpmiPower(dataclasses.replace(bmc.bmc_config(), password=SecretRef(file=wrong)))
    with pytest.raises(FatalInfraError, match="authentication refused"):
        power.status()


def test_min_command_interval_spaces_commands(bmc):
    power = IpmiPower(bmc.bmc_config(min_command_interval=0.3))
    try:
        power.status()
        started = time.monotonic()
        power.status()
        power.status()
        assert time.monotonic() - started >= 0.6
    finally:
        power.close()


def test_two_bmcs_polled_from_parallel_threads(tmp_path):
    peers = [LoopbackBmc(tmp_path / f"m{i}") for i in range(2)]
    powers = [IpmiPower(peer.bmc_config()) for peer in peers]
    failures: list[BaseException] = []

    def exercise(power: IpmiPower) -> None:
        try:
            for _ in range(25):
                assert power.status() == "on"
            power.off()
            assert power.status() == "off"
            power.on()
            assert power.status() == "on"
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=exercise, args=(power,)) for power in powers]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not any(thread.is_alive() for thread in threads), "a power call hung"
        assert not failures, failures
        assert time.monotonic() - started < 30
    finally:
        for power, peer in zip(powers, peers):
            power.close()
            peer.stop()


def test_session_is_relogged_after_the_bmc_restarts(bmc, power):
    assert power.status() == "on"
    bmc.kill()
    bmc.start()
    deadline = time.monotonic() + 90
    while True:                             # a dead session fails retryably, then heals
        try:
            assert power.status() == "on"
            break
        except RetryableInfraError:
            assert time.monotonic() < deadline, "power control never came back"
            time.sleep(0.1)



def relogging_with_nothing_in_flight(session) -> bool:
    from pyghmi.ipmi.private.session import Session
    return (session.logging and session.sockaddr is None and not session.lastpayload
            and session not in Session.waiting_sessions)


def test_a_frozen_bmc_re_logging_in_costs_little_cpu(tmp_path):
    """While a dead BMC's shared session re-logs in, its command waits with no address and
    it and the pump used to wake each other through pyghmi's I/O thread: 60-110 % of a core
    for ~15 s, once the re-login's own retries were spent. Measured over 5 s of that phase."""
    from orchestrator.transports.sol import SolConsole
    peer = LoopbackBmc(tmp_path / "frozen")
    power = IpmiPower(peer.bmc_config())
    console = SolConsole(peer.bmc_config(), raw_log=tmp_path / "console.raw")
    stop = threading.Event()

    def poll() -> None:                     # a cycle thread trying to get power back
        while not stop.is_set():
            try:
                power.status()
            except RetryableInfraError:
                pass
            stop.wait(1.0)
    try:
        assert power.status() == "on" and console.wait_until_healthy(20)
        session = power._command.ipmi_session
        peer.process.send_signal(signal.SIGSTOP)
        threading.Thread(target=poll, daemon=True).start()
        deadline = time.monotonic() + 60
        while not relogging_with_nothing_in_flight(session):     # ~20 s after the freeze
            assert time.monotonic() < deadline, "the session never got to re-log in"
            time.sleep(0.05)
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(5)
        cpu_pct = 100 * (time.process_time() - cpu) / (time.monotonic() - wall)
        assert cpu_pct <= 5, f"{cpu_pct:.1f} % of a core while one BMC is dead"
    finally:
        stop.set()
        peer.process.send_signal(signal.SIGCONT)
        console.close()
        power.close()
        peer.stop()

# -- unit: error mapping and the command gate ------------------------------------------------

CFG = BmcConfig(address="bmc.example", user="admin", password=SecretRef(env="UNUSED"))


@pytest.mark.parametrize("exc, expected", [
    (IpmiException("Incorrect password provided"), FatalInfraError),
    (IpmiException("Unauthorized name reported in RAKP2"), FatalInfraError),
    (IpmiException("Session no longer connected"), RetryableInfraError),
    (IpmiException(None), RetryableInfraError),
    (IpmiException("Invalid command", 0xC1), UnsupportedOperation),
    (IpmiException("Command not supported in present state", 0xD5), UnsupportedOperation),
    (socket.gaierror("Name or service not known"), FatalInfraError),
    (OSError("Network is unreachable"), RetryableInfraError),
])
def test_ipmi_error_mapping(exc, expected):
    error = pyghmi_loop.infra_error(exc, CFG, "get power")
    assert type(error) is expected
    assert "bmc.example:623: get power" in str(error)


def test_none_message_becomes_readable():
    assert "no answer" in str(pyghmi_loop.infra_error(IpmiException(None), CFG, "x"))


def test_command_gate_spaces_slots_and_zero_interval_does_not_serialize():
    gate = pyghmi_loop.CommandGate(0.2)
    ends = []
    for _ in range(3):
        with gate.slot():
            ends.append(time.monotonic())
    assert ends[1] - ends[0] >= 0.19 and ends[2] - ends[1] >= 0.19
    open_gate = pyghmi_loop.CommandGate(0.0)
    with open_gate.slot(), open_gate.slot():   # re-entrant use would deadlock if it locked
        pass


def test_credentials_are_bytes(monkeypatch):
    monkeypatch.setenv("UNUSED", "secret")
    assert pyghmi_loop.bmc_credentials(CFG) == (b"admin", b"secret")


def test_pyghmi_registry_locks_taken_in_either_order_never_deadlock():
    """pyghmi takes KEEPALIVE_SESSIONS then WAITING_SESSIONS when sending, and the reverse when
    its pump marks a timed-out session broken; once patched, both orders finish."""
    from pyghmi.ipmi.private import session as ipmi_session
    from pyghmi.ipmi.private import util

    pyghmi_loop.ensure_pump()
    done, first_held = [], threading.Event()

    def nested(outer_name: str, inner_name: str, hold_first: bool) -> None:
        with util.protect(getattr(ipmi_session, outer_name)):     # looked up at call time, as pyghmi does
            if hold_first:
                first_held.set()
                time.sleep(0.2)      # the stimulus: the other thread tries its outer lock meanwhile
            with util.protect(getattr(ipmi_session, inner_name)):
                done.append(outer_name)

    sender = threading.Thread(target=nested, args=("KEEPALIVE_SESSIONS", "WAITING_SESSIONS", True), daemon=True)
    pump = threading.Thread(target=nested, args=("WAITING_SESSIONS", "KEEPALIVE_SESSIONS", False), daemon=True)
    sender.start()
    first_held.wait(2)
    pump.start()
    sender.join(3)
    pump.join(3)
    assert sorted(done) == ["KEEPALIVE_SESSIONS", "WAITING_SESSIONS"]
