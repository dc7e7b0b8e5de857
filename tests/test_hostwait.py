"""wait_for_boot's hedged probes, on scripted shells (no host)."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.errors import DeadlineExceeded, FatalInfraError, RetryableInfraError
from orchestrator.cycle.hostwait import BOOT_FACTS_CMD, wait_for_boot
from orchestrator.protocols.shell import CommandResult, ShellProtocol


class ScriptedHost:
    """Connection n (0-based) behaves as ``behaviours[n]`` (the last one repeats):
    'stall' blocks until its timeout like a banner that never comes, 'refuse' fails at
    once, 'old'/'new' answer with that boot_id, 'badkey' is a pinned-key mismatch."""

    def __init__(self, *behaviours: str):
        self.behaviours, self.connections = behaviours, 0
        self.lock, self.released = threading.Lock(), threading.Event()
        self.made: list[ScriptedShell] = []

    def shell(self) -> "ScriptedShell":
        with self.lock:
            n, self.connections = self.connections, self.connections + 1
            self.made.append(ScriptedShell(self, self.behaviours[min(n, len(self.behaviours) - 1)]))
            return self.made[-1]


class ScriptedShell(ShellProtocol):
    def __init__(self, host: ScriptedHost, behaviour: str):
        self.host, self.behaviour, self.closed = host, behaviour, False

    def run(self, command: str, *, timeout: float, check: bool = True) -> CommandResult:
        assert command == BOOT_FACTS_CMD
        if self.behaviour == "stall":      # until its timeout, the test's release, or a close
            end = time.monotonic() + timeout
            while not (self.host.released.wait(0.01) or self.closed) and time.monotonic() < end:
                pass
            raise RetryableInfraError("closed while waiting for the banner" if self.closed else "banner timeout")
        if self.behaviour == "refuse":
            raise RetryableInfraError("connection refused")
        if self.behaviour == "badkey":
            raise FatalInfraError("host key is not the pinned one")
        return CommandResult(command, 0, f"{self.behaviour}-boot\n7.3.4\n1\n1700000000\n", "", 0.01)

    def fresh(self) -> "ScriptedShell":
        return self.host.shell()

    def fire_detached(self, command: str, *, timeout: float, output: str) -> None:
        raise AssertionError("not used")

    def close(self) -> None:
        self.closed = True


def test_a_stalled_probe_does_not_delay_noticing_the_host():
    host = ScriptedHost("stall", "new")
    started = time.monotonic()
    try:
        facts = wait_for_boot(host.shell(), deadline_s=10, state="dump", not_boot_id="old-boot")
    finally:
        host.released.set()
    # the first probe would have stalled for PROBE_TIMEOUT_S (5 s); the hedge answers after one poll period
    assert facts.boot_id == "new-boot"
    assert time.monotonic() - started < 1.0


def test_the_old_boot_is_not_taken_for_the_new_one():
    host = ScriptedHost("old", "old", "refuse", "new")
    facts = wait_for_boot(host.shell(), deadline_s=10, state="dump", not_boot_id="old-boot")
    assert facts.boot_id == "new-boot" and host.connections >= 4   # the caller's + three probes


def test_the_answering_probe_hands_its_connection_over_and_every_other_one_is_closed():
    host = ScriptedHost("stall", "old", "new")
    main = host.shell()
    adopted = []
    main.adopt = adopted.append
    try:
        facts = wait_for_boot(host.shell(), deadline_s=10, state="dump", not_boot_id="old-boot", keep_for=main)
    finally:
        host.released.set()
    assert facts.boot_id == "new-boot"
    assert len(adopted) == 1 and adopted[0].behaviour == "new" and not adopted[0].closed
    others = [s for s in host.made if s is not adopted[0] and s is not main]
    deadline = time.monotonic() + 10
    while not all(s.closed for s in others) and time.monotonic() < deadline:
        time.sleep(0.01)        # the stalled one closes when it gives up
    assert all(s.closed for s in others)


def test_probes_still_waiting_for_a_banner_are_closed_the_moment_one_answers():
    # On the lab every stalled probe got its banner the moment sshd listened, and their
    # handshakes slowed the rebooted guest's first commands: they are not left to time out.
    host = ScriptedHost("stall", "stall", "stall", "new")
    try:
        facts = wait_for_boot(host.shell(), deadline_s=10, state="dump", not_boot_id="old-boot")
        stalled = [s for s in host.made[1:] if s.behaviour == "stall"]
        assert facts.boot_id == "new-boot" and len(stalled) == 2
        assert all(s.closed for s in stalled)
    finally:
        host.released.set()


def test_deadline_names_the_state_and_the_last_reason():
    host = ScriptedHost("old")
    with pytest.raises(DeadlineExceeded, match="still the same boot") as caught:
        wait_for_boot(host.shell(), deadline_s=0.6, state="wedge", not_boot_id="old-boot")
    assert "wedge" in str(caught.value)


def test_a_wrong_host_key_is_final_not_retried_until_the_deadline():
    host = ScriptedHost("badkey")
    started = time.monotonic()
    with pytest.raises(FatalInfraError, match="pinned"):
        wait_for_boot(host.shell(), deadline_s=30, state="preflight")
    assert time.monotonic() - started < 1.0


def test_probes_in_flight_are_bounded():
    host = ScriptedHost("stall")
    try:
        with pytest.raises(DeadlineExceeded):
            wait_for_boot(host.shell(), deadline_s=2.5, state="dump")
    finally:
        host.released.set()
    # one poll period each, but never more than MAX_PROBES_IN_FLIGHT stalled at once
    from orchestrator.cycle.hostwait import MAX_PROBES_IN_FLIGHT
    assert host.connections - 1 == MAX_PROBES_IN_FLIGHT


def test_retry_until_retries_transient_failures_within_the_deadline_and_nothing_else():
    from orchestrator.cycle.hostwait import retry_until
    from orchestrator.errors import FatalInfraError, RetryableInfraError
    calls, slept, retried = [], [], []

    def flaky(left):
        calls.append(left)
        if len(calls) < 3:
            raise RetryableInfraError("Error reading SSH protocol banner")
        return "facts"

    assert retry_until(30.0, flaky, sleep=slept.append, on_retry=retried.append) == "facts"
    assert len(calls) == 3 and len(slept) == 2 and all("banner" in str(e) for e in retried)

    def fatal(left):
        calls.append(left)
        raise FatalInfraError("host key mismatch")

    calls.clear()
    with pytest.raises(FatalInfraError):
        retry_until(30.0, fatal, sleep=slept.append)
    assert len(calls) == 1

    def never(left):
        raise RetryableInfraError("still refused")

    with pytest.raises(RetryableInfraError, match="still refused"):     # no time left for a pause
        retry_until(0.5, never, sleep=lambda s: None)


def test_a_wait_for_a_new_boot_probes_at_the_slow_period_from_the_start():
    """No host is through a reboot within HEDGE_FAST_S: probing fast then only costs CPU."""
    from orchestrator.cycle.hostwait import SSH_POLL_S, SSH_POLL_SLOW_S
    new_boot, up_again = ScriptedHost("refuse"), ScriptedHost("refuse")
    with pytest.raises(DeadlineExceeded):
        wait_for_boot(new_boot.shell(), deadline_s=1.0, state="dump", not_boot_id="old-boot")
    with pytest.raises(DeadlineExceeded):
        wait_for_boot(up_again.shell(), deadline_s=1.0, state="preflight")
    assert new_boot.connections - 1 <= 1 + 1.0 / SSH_POLL_SLOW_S
    assert up_again.connections - 1 >= 0.5 / SSH_POLL_S     # the fast start stays for a host expected up


def test_the_probe_budget_gives_turns_in_order_and_never_more_than_its_rate():
    from orchestrator.cycle.probe_pace import ProbePace
    pace = ProbePace(per_second=10.0)
    assert pace.reserve(5.0) == 5.0                     # room: at once
    assert pace.reserve(5.0) == pytest.approx(5.1)      # asked for at the same time: next turn
    assert pace.reserve(5.05) == pytest.approx(5.2)
    assert pace.reserve(9.0) == 9.0                     # a quiet spell gives no credit ...
    assert pace.reserve(9.0) == pytest.approx(9.1)      # ... the rate holds right after it


def test_hosts_waiting_together_share_the_probe_budget_and_one_alone_never_meets_it():
    """Past the budget every waiting host probes less often, round robin (the controller's CPU
    stays bounded); a host waiting alone is paced by its own period only."""
    from orchestrator.cycle.hostwait import SSH_POLL_SLOW_S
    from orchestrator.cycle.probe_pace import ProbePace
    pace, hosts = ProbePace(per_second=20.0), [ScriptedHost("refuse") for _ in range(8)]

    def wait(host):
        with pytest.raises(DeadlineExceeded):
            wait_for_boot(host.shell(), deadline_s=1.5, state="dump", not_boot_id="old-boot", pace=pace)
    threads = [threading.Thread(target=wait, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    probes = [host.connections - 1 for host in hosts]
    # 8 hosts at their own period start up to 8 x (1 + 1.5 / 0.25) = 56 probes (48 measured); the budget
    # (20 a second) allows one start at once each, then 20 a second
    assert sum(probes) <= 8 + 1.5 * 20 + 2
    assert min(probes) >= 3                             # and every host still gets its turns
    alone = ScriptedHost("refuse")
    with pytest.raises(DeadlineExceeded):
        wait_for_boot(alone.shell(), deadline_s=1.5, state="dump", not_boot_id="old-boot",
                      pace=ProbePace(per_second=20.0))
    assert alone.connections - 1 >= 1.5 / SSH_POLL_SLOW_S
