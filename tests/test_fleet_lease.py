"""The host lease's scripts, run for real: with this machine's sh (dash + coreutils, like a
rack server) and with busybox (like the lab guests), including many controllers racing for
one host at once."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestrator.errors import RetryableInfraError
from orchestrator.fleet import lease
from orchestrator.fleet.lease import Holder, LeaseHeld
from test_kernel_shells import LocalShell, busybox_shell

EXTRA_APPLETS = ("date", "mv", "tr", "true", "printf", "mkdir", "rm", "cat", "sed", "sleep")


@pytest.fixture(params=["sh", "busybox"])
def shell(request, tmp_path):
    if request.param == "sh":
        return LocalShell()
    sh = busybox_shell(str(tmp_path))
    bindir = os.path.dirname(sh.argv0[0])
    for applet in EXTRA_APPLETS:
        link = os.path.join(bindir, applet)
        if not os.path.exists(link):
            os.symlink(os.readlink(sh.argv0[0]), link)
    return sh


def holder(run_id: str, token: str) -> Holder:
    return Holder(run_id=run_id, controller="ctl-a:42", user="night ly", token=token)


def test_take_renew_release_and_the_record_names_the_holder(shell, tmp_path):
    state = str(tmp_path / "state")
    mine = holder("run-1", "aaaa")
    taken = lease.take(shell, "srv1", state, mine, ttl_s=60)
    assert (taken["run_id"], taken["controller"], taken["user"]) == ("run-1", "ctl-a:42", "night_ly")
    assert int(taken["expires"]) - int(taken["since"]) == 60
    renewed = lease.take(shell, "srv1", state, mine, ttl_s=300)
    assert renewed["since"] == taken["since"] and int(renewed["expires"]) >= int(taken["expires"]) + 239
    seen = lease.read(shell, "srv1", state)
    assert seen["expired"] == "no" and 0 < int(seen["left_s"]) <= 300
    assert lease.release(shell, "srv1", state, mine) is True
    assert lease.read(shell, "srv1", state) == {}
    assert not os.path.exists(os.path.join(state, "lease.lock"))     # the lock is never left behind


def test_someone_elses_live_lease_is_refused_with_its_holder(shell, tmp_path):
    state = str(tmp_path / "state")
    lease.take(shell, "srv1", state, holder("run-1", "aaaa"), ttl_s=60)
    with pytest.raises(LeaseHeld) as refused:
        lease.take(shell, "srv1", state, holder("run-2", "bbbb"), ttl_s=60)
    assert refused.value.holder["run_id"] == "run-1"
    assert "run-1" in str(refused.value) and "ctl-a:42" in str(refused.value)
    assert lease.release(shell, "srv1", state, holder("run-2", "bbbb")) is False   # not theirs to give back
    assert lease.read(shell, "srv1", state)["run_id"] == "run-1"


def test_a_release_without_the_lock_gives_back_only_its_own_lease(shell, tmp_path):
    state = str(tmp_path / "state")
    lease.take(shell, "srv1", state, holder("run-1", "aaaa"), ttl_s=60)
    assert lease.release(shell, "srv1", state, holder("run-2", "bbbb"), locked=False) is False
    assert lease.read(shell, "srv1", state)["run_id"] == "run-1"
    assert lease.release(shell, "srv1", state, holder("run-1", "aaaa"), locked=False) is True
    assert lease.read(shell, "srv1", state) == {} and not os.path.exists(os.path.join(state, "lease.lock"))


def test_a_keeper_gives_back_a_lease_far_from_expiry_without_the_lock_and_one_near_it_under_it(tmp_path):
    from orchestrator.fleet.lease_keeper import LeaseKeeper
    from orchestrator.tunables import LEASE_COMMAND_TIMEOUT_S, LEASE_HEADROOM_S

    # the second is written valid for less than a lease command may take (headroom included)
    for ttl, locked in ((100, False), (LEASE_COMMAND_TIMEOUT_S - LEASE_HEADROOM_S - 1, True)):
        shell = LocalShell()
        keeper = LeaseKeeper(shell, "srv1", str(tmp_path / "state"), holder("run-1", "aaaa"))
        keeper.take(ttl, wait_s=0)
        keeper.release()
        assert ("lease.lock" in shell.commands[-1]) is locked, shell.commands[-1]
        assert lease.read(shell, "srv1", str(tmp_path / "state")) == {}


def test_an_expired_lease_is_taken_over_and_says_whose_it_was(shell, tmp_path):
    state = str(tmp_path / "state")
    lease.take(shell, "srv1", state, holder("dead-run", "aaaa"), ttl_s=-1)     # its holder died
    taken = lease.take(shell, "srv1", state, holder("run-2", "bbbb"), ttl_s=60)
    assert taken["run_id"] == "run-2" and "dead-run" in taken["taken_over"]


def test_an_operator_can_break_a_lease(shell, tmp_path):
    state = str(tmp_path / "state")
    lease.take(shell, "srv1", state, holder("run-1", "aaaa"), ttl_s=600)
    assert lease.break_lease(shell, "srv1", state)["run_id"] == "run-1"
    lease.take(shell, "srv1", state, holder("run-2", "bbbb"), ttl_s=60)


def test_a_stale_lock_left_by_a_killed_command_is_removed(shell, tmp_path):
    state = tmp_path / "state"
    (state / "lease.lock").mkdir(parents=True)
    (state / "lease.lock" / "at").write_text("1000\n")       # long ago, in the host's clock
    assert lease.take(shell, "srv1", str(state), holder("run-1", "aaaa"), ttl_s=60)["run_id"] == "run-1"


def test_a_stale_lock_whose_time_never_reached_the_disk_is_removed_by_its_age(shell, tmp_path):
    import os
    state = tmp_path / "state"
    (state / "lease.lock").mkdir(parents=True)
    (state / "lease.lock" / "at").write_text("")              # power lost before the write landed
    os.utime(state / "lease.lock", (1000, 1000))
    assert lease.take(shell, "srv1", str(state), holder("run-1", "aaaa"), ttl_s=60)["run_id"] == "run-1"


def test_a_fresh_lock_without_a_time_yet_is_busy_not_stale(tmp_path):
    state = tmp_path / "state"
    (state / "lease.lock").mkdir(parents=True)                # its holder is between mkdir and echo
    with pytest.raises(RetryableInfraError, match="lease lock"):
        lease.take(LocalShell(), "srv1", str(state), holder("run-1", "aaaa"), ttl_s=60)


def test_a_busy_lock_is_a_retryable_error_not_a_verdict(tmp_path):
    state = tmp_path / "state"
    (state / "lease.lock").mkdir(parents=True)
    (state / "lease.lock" / "at").write_text("9999999999\n")  # held right now by someone else
    with pytest.raises(RetryableInfraError, match="lease lock"):
        lease.take(LocalShell(), "srv1", str(state), holder("run-1", "aaaa"), ttl_s=60)


def test_of_many_controllers_racing_for_one_host_exactly_one_wins(shell, tmp_path):
    state = str(tmp_path / "state")

    def race(i: int):
        try:
            return lease.take(shell, "srv1", state, holder(f"run-{i}", f"t{i:04d}"), ttl_s=60)["run_id"]
        except LeaseHeld as held:
            return f"refused:{held.holder['run_id']}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(race, range(16)))
    winners = [o for o in outcomes if not o.startswith("refused:")]
    assert len(winners) == 1, outcomes
    assert all(o == f"refused:{winners[0]}" for o in outcomes if o not in winners)


def test_a_dead_holder_on_this_machine_is_taken_over_at_once_and_only_its_lease(shell, tmp_path):
    import socket
    import subprocess
    from orchestrator.fleet.lease_keeper import LeaseKeeper

    state = str(tmp_path / "state")
    gone = subprocess.Popen(["true"])
    gone.wait()                                   # a pid that no longer runs
    killed = subprocess.Popen(["sleep", "60"])
    killed.kill()                                 # killed, not reaped yet: a zombie holds no lease
    os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)     # dead, and left unreaped
    assert lease.holder_died_here({"controller": f"{socket.gethostname()}:{killed.pid}"})
    killed.wait()
    dead = Holder(run_id="killed", controller=f"{socket.gethostname()}:{gone.pid}", user="u", token="dead")
    lease.take(shell, "srv1", state, dead, ttl_s=600)
    keeper = LeaseKeeper(shell, "srv1", state, holder("run-2", "bbbb"))
    assert keeper.take(60, wait_s=0)["run_id"] == "run-2"
    # a live holder is never stolen from, even by a caller naming some other token
    with pytest.raises(LeaseHeld):
        lease.take(shell, "srv1", state, holder("run-3", "cccc"), ttl_s=60, steal="dead")
    alive = Holder(run_id="alive", controller=f"{socket.gethostname()}:{os.getpid()}", user="u", token="live")
    assert not lease.holder_died_here({"controller": alive.controller})
    keeper.release()
    assert lease.read(shell, "srv1", state) == {}


def test_a_keeper_renews_its_own_lease_without_waiting_and_waits_for_others(shell, tmp_path):
    from orchestrator.fleet.lease_keeper import LeaseKeeper

    state = str(tmp_path / "state")
    keeper = LeaseKeeper(shell, "srv1", state, holder("run-1", "aaaa"))
    first = keeper.take(60, wait_s=0)
    assert keeper.take(600, wait_s=0)["since"] == first["since"]        # renewed, not a new lease
    other = LeaseKeeper(shell, "srv1", state, holder("run-2", "bbbb"))
    slept = []
    with pytest.raises(LeaseHeld):
        other.take(60, wait_s=12, sleep=slept.append)     # polls, then gives up naming the holder
    assert slept == [5.0, 5.0]
    keeper.release()
    assert other.take(60, wait_s=0)["run_id"] == "run-2"
    other.release()


def test_a_lease_is_given_back_over_a_fresh_connection_when_the_one_it_held_died_with_a_reboot(tmp_path):
    from orchestrator.fleet.lease_keeper import LeaseKeeper

    class StaleThenFresh(LocalShell):
        """Its connection belonged to the boot that panicked: the first command after fails."""
        stale = False

        def run(self, command, *, timeout, check=True):
            if self.stale:
                raise RetryableInfraError("ssh: connection reset by peer")
            return super().run(command, timeout=timeout, check=check)

        def close(self):
            self.stale = False

    shell, state = StaleThenFresh(), str(tmp_path / "state")
    keeper = LeaseKeeper(shell, "srv1", state, holder("run-1", "aaaa"))
    keeper.take(60, wait_s=0)
    shell.stale = True              # the host panicked and came back; no renewal fell since
    keeper.release()
    assert lease.read(LocalShell(), "srv1", state) == {}


def test_the_release_at_the_end_goes_over_the_connection_the_cases_left(tmp_path):
    from orchestrator.fleet.lease_keeper import LeaseKeeper

    class Connected(LocalShell):
        def __init__(self, live):
            super().__init__()
            self.live, self.adopted = live, []

        def run(self, command, *, timeout, check=True):
            if not self.live:
                raise RetryableInfraError("ssh: connection reset by peer (the host rebooted)")
            return super().run(command, timeout=timeout, check=check)

        def adopt(self, other):
            self.live, other.live = other.live, False
            self.adopted.append(other)

    lease_shell, cases_shell, state = Connected(True), Connected(True), str(tmp_path / "state")
    keeper = LeaseKeeper(lease_shell, "srv1", state, holder("run-1", "aaaa"))
    keeper.take(60, wait_s=0)
    lease_shell.live = False            # its connection died with the host's panic
    keeper.release(connection_of=cases_shell)
    assert lease_shell.adopted == [cases_shell] and lease.read(LocalShell(), "srv1", state) == {}
    keeper.release(connection_of=cases_shell)       # nothing held: nothing taken over
    assert lease_shell.adopted == [cases_shell]


def test_a_kept_lease_covering_the_next_case_costs_that_case_no_command(tmp_path):
    from orchestrator.fleet.lease_keeper import LeaseKeeper
    from orchestrator.tunables import LEASE_HEADROOM_S

    shell, state = LocalShell(), str(tmp_path / "state")
    keeper = LeaseKeeper(shell, "srv1", state, holder("run-1", "aaaa"))
    keeper.take(100, wait_s=0)
    written = int(lease.read(shell, "srv1", state)["left_s"])
    assert 100 + LEASE_HEADROOM_S - 2 <= written <= 100 + LEASE_HEADROOM_S     # headroom for renewals
    sent = len(shell.commands)
    keeper.take(100, wait_s=0)                  # the next case: still covered, nothing sent
    assert len(shell.commands) == sent
    keeper.take(100 + LEASE_HEADROOM_S, wait_s=0)   # a longer case than what is left: taken again
    assert len(shell.commands) == sent + 1
    keeper.release()
    keeper.take(100, wait_s=0)                  # given back: a new take goes to the host
    assert lease.read(shell, "srv1", state)["run_id"] == "run-1"
    keeper.release()


def test_the_first_cases_lease_is_taken_while_the_host_is_opened_and_a_holder_is_left_to_the_case(tmp_path):
    from orchestrator.fleet.lease_keeper import LeaseKeeper

    shell, state = LocalShell(), str(tmp_path / "state")
    keeper = LeaseKeeper(shell, "srv1", state, holder("run-1", "aaaa"))
    keeper.warm_up(100).join()
    assert lease.read(shell, "srv1", state)["run_id"] == "run-1"
    sent = len(shell.commands)
    keeper.take(100, wait_s=0)                  # the first case: already taken for it
    assert len(shell.commands) == sent
    other = LeaseKeeper(LocalShell(), "srv1", state, holder("run-2", "bbbb"))
    other.warm_up(100).join()                   # held: nothing taken, nothing raised here
    with pytest.raises(LeaseHeld, match="run-1"):
        other.take(100, wait_s=0)               # the case says who holds it
    keeper.release()


def test_an_empty_lease_left_by_a_crash_is_nobodys(shell, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "lease").write_text("")            # the rename reached the disk, the data did not
    assert lease.release(shell, "srv1", str(state), holder("run-1", "aaaa"))
    assert not (state / "lease").exists()
    (state / "lease").write_text("")
    assert lease.take(shell, "srv1", str(state), holder("run-2", "bbbb"), 60)["run_id"] == "run-2"
