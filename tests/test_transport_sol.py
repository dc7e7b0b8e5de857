"""SolConsole against real loopback BMC processes, plus unit tests of the line assembler."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

import pytest

from orchestrator.transports.ipmi import IpmiPower
from orchestrator.protocols.console import clean_console_text
from orchestrator.transports.console_transcript import ConsoleTranscript, LineAssembler
from orchestrator.transports.sol import SolConsole
from test_transport_peers import PASSWORD, USER, LoopbackBmc


def wait_until(predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"{what} within {timeout} s"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def console(bmc, tmp_path):
    console = SolConsole(bmc.bmc_config(), raw_log=tmp_path / "console.raw")
    assert console.wait_until_healthy(20), console.last_failure
    yield console
    console.close()


# -- against a loopback BMC ----------------------------------------------------------------

def test_lines_arrive_cleaned_and_raw_bytes_are_kept(bmc, console, tmp_path):
    since = console.mark()
    raw = b"\x1b[6n/ # \x1b[1;31mKernel panic - not syncing: Memory failure\x1b[0m\r\nnext\r\n"
    bmc.guest.say(raw)
    line = console.wait_for(re.compile(r"Kernel panic"), since=since, timeout=5)
    assert line is not None and line.text == "/ # Kernel panic - not syncing: Memory failure"
    assert console.wait_for(re.compile("^next$"), since=since, timeout=5)
    wait_until(lambda: (tmp_path / "console.raw").read_bytes().endswith(raw), 5, "raw log")
    assert (tmp_path / "console.raw").read_bytes() == raw


def test_line_is_visible_well_under_200_ms_after_it_is_printed(bmc, console):
    for n in range(10):
        since = console.mark()
        printed = time.monotonic()
        bmc.guest.say(f"latency probe {n}\n")
        line = console.wait_for(re.compile(f"latency probe {n}$"), since=since, timeout=5)
        assert line is not None and line.t - printed < 0.2


def test_wait_for_times_out_with_none(console):
    started = time.monotonic()
    assert console.wait_for(re.compile("never printed"), since=console.mark(), timeout=0.3) is None
    assert 0.29 <= time.monotonic() - started < 1.0


def test_two_bmcs_power_and_sol_at_once(tmp_path):
    peers = [LoopbackBmc(tmp_path / f"m{i}") for i in range(2)]
    consoles = [SolConsole(p.bmc_config(), raw_log=tmp_path / f"c{i}.raw") for i, p in enumerate(peers)]
    powers = [IpmiPower(p.bmc_config()) for p in peers]
    failures: list[BaseException] = []

    def exercise(i: int) -> None:
        try:
            assert consoles[i].wait_until_healthy(20), consoles[i].last_failure
            for n in range(20):
                since = consoles[i].mark()
                peers[i].guest.say(f"host{i} line {n}\n")
                assert powers[i].status() == "on"
                assert consoles[i].wait_for(re.compile(f"host{i} line {n}$"), since=since, timeout=5)
            powers[i].reset()
            assert not any(f"host{1 - i}" in line.text for line in consoles[i].lines())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=exercise, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
        assert not any(thread.is_alive() for thread in threads), "a call hung"
        assert not failures, failures
        assert all(console.healthy() for console in consoles)
    finally:
        for console, power, peer in zip(consoles, powers, peers):
            console.close()
            power.close()
            peer.stop()


def test_killed_bmc_is_noticed_promptly_and_the_console_recovers(bmc, console):
    bmc.kill()
    noticed = wait_until(lambda: not console.healthy(), 8, "dead console noticed")
    assert noticed < 5.0                    # pyghmi alone: 30-45 s (its SOL keepalive)
    bmc.start()
    assert console.wait_until_healthy(60), console.last_failure
    since = console.mark()
    bmc.guest.say("after the BMC restart\n")
    assert console.wait_for(re.compile("after the BMC restart"), since=since, timeout=5)


FREEZE_S = 8.0   # long enough for the clients to retry and give up their sessions


def test_a_frozen_bmc_outlives_its_clients_retries_and_the_console_recovers(bmc, console):
    """SIGSTOP the BMC for FREEZE_S under a live console and power session, then resume it: the
    clients' piled-up retries and the session's close used to meet in pyghmi's server code
    (pyghmi_server_fixes F6) and the AttributeError killed the BMC process."""
    import signal
    power = IpmiPower(bmc.bmc_config())
    assert power.status() == "on"
    bmc.process.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: not console.healthy(), 8, "frozen console noticed")
        with pytest.raises(Exception):
            power.status()                   # a frozen BMC answers nothing
        time.sleep(FREEZE_S)   # the stimulus: how long the BMC stays stopped (not a wait for anything)
    finally:
        bmc.process.send_signal(signal.SIGCONT)
    assert console.wait_until_healthy(20), console.last_failure
    assert bmc.process.poll() is None, (bmc.machine_dir / "bmc.log").read_text()[-2000:]
    assert power.status() == "on"
    since = console.mark()
    bmc.guest.say("after the freeze\n")
    assert console.wait_for(re.compile("after the freeze"), since=since, timeout=5)
    power.close()


def test_power_and_console_closed_and_reopened_share_one_live_session(bmc, tmp_path):
    """Cases open and close their transports; each reopening must work at once."""
    for round_ in range(5):
        power = IpmiPower(bmc.bmc_config())
        assert power.status() == "on"
        power.close()
        console = SolConsole(bmc.bmc_config(), raw_log=tmp_path / "console.raw")
        try:
            assert console.wait_until_healthy(10), (round_, console.last_failure)
        finally:
            console.close()


@pytest.mark.skipif(not shutil.which("ipmitool"), reason="ipmitool is not installed")
def test_sol_deactivated_by_another_client_is_noticed_and_reactivated(bmc, console):
    subprocess.run(["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(bmc.port),
                    "-U", USER, "-P", PASSWORD, "sol", "deactivate"], check=True, timeout=20)
    wait_until(lambda: not console.healthy(), 5, "deactivated console noticed")
    assert console.wait_until_healthy(20), console.last_failure
    since = console.mark()
    bmc.guest.say("back again\n")
    assert console.wait_for(re.compile("back again"), since=since, timeout=5)


def test_break_and_key_reach_a_telnet_uart_and_its_greeting_stays_out_of_the_console(tmp_path):
    """SOL "generate break" -> the lab BMC -> ``IAC BREAK`` on QEMU's telnet chardev, then the
    key; QEMU's telnet negotiation (sent at connect) is in neither log nor transcript."""
    bmc = LoopbackBmc(tmp_path / "m1", telnet=True)
    console = SolConsole(bmc.bmc_config(), raw_log=tmp_path / "console.raw")
    try:
        assert console.wait_until_healthy(20), console.last_failure
        printed = b"login: \xff byte-exact\r\n"     # guest output is never escaped by QEMU
        bmc.guest.say(printed)
        assert console.wait_for(re.compile("byte-exact"), since=0, timeout=5)
        console.send_break(then="c")
        wait_until(lambda: bytes(bmc.guest.received) == b"\xff\xf3c", 5, "BREAK + c at the UART")
        assert (tmp_path / "console.raw").read_bytes() == printed
        assert (tmp_path / "m1" / "console.log").read_bytes() == printed
    finally:
        console.close()
        bmc.stop()


def test_break_on_a_plain_socket_chardev_is_dropped_and_the_key_still_typed(bmc, console):
    console.send_break(then="c")
    wait_until(lambda: bytes(bmc.guest.received) == b"c", 5, "the key at the guest")
    assert "serial BREAK dropped" in (bmc.machine_dir / "bmc.log").read_text()


# -- unit: line assembly and cleaning --------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("\x1b[6n/ # uname -r", "/ # uname -r"),
    ("\x1b[1;32mOK\x1b[0m done", "OK done"),
    ("\x1b]0;title\x07prompt", "prompt"),
    ("\x1b(Btext\x1b=", "text"),
    ("a\tb\x00c\x07d\x08", "a\tbcd"),
    ("\x9b31mC1 CSI", "31mC1 CSI"),   # a lone C1 introducer is dropped, not interpreted
])
def test_clean_console_text(raw, clean):
    assert clean_console_text(raw) == clean


def test_assembler_handles_crlf_chunk_splits_and_multibyte_splits():
    assembler = LineAssembler()
    assert assembler.feed(b"[    1.0] first\r") == []
    assert assembler.feed(b"\nsec") == ["[    1.0] first"]
    assert assembler.feed("ond µ".encode()[:-1]) == []
    assert assembler.feed("µ\n\n".encode()[-3:]) == ["second µ", ""]
    assert assembler.feed(b"\x1b[") == []
    assert assembler.feed(b"6nprompt\n") == ["prompt"]


def test_assembler_caps_unterminated_lines():
    assembler = LineAssembler(max_line=10)
    assert assembler.feed(b"x" * 25) == ["x" * 10, "x" * 10]
    assert assembler.feed(b"\n") == ["xxxxx"]


def test_invalid_utf8_is_replaced_not_fatal():
    assert LineAssembler().feed(b"bad \xff\xfe byte\n") == ["bad \ufffd\ufffd byte"]


def test_transcript_wakes_a_waiter_at_once_and_keeps_indexes():
    transcript = ConsoleTranscript()
    transcript.feed(b"zero\none\n")
    found = {}

    def waiter():
        found["line"] = transcript.wait_for(re.compile("two"), since=1, timeout=5)
        found["at"] = time.monotonic()

    thread = threading.Thread(target=waiter)
    thread.start()
    fed_at = time.monotonic()
    transcript.feed(b"tw")
    transcript.feed(b"o\n")
    thread.join(timeout=5)
    assert found["line"].index == 2 and found["line"].text == "two"
    assert found["at"] - fed_at < 0.1
    assert transcript.mark() == 3
    assert [line.text for line in transcript.lines(1)] == ["one", "two"]
    assert transcript.wait_for(re.compile("zero"), since=1, timeout=0) is None
