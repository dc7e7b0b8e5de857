"""Several commands in one round trip (protocols/shell_batch.py) answered one by one
(cycle/prefetch.py): each keeps its own exit status, output and error message."""

from __future__ import annotations

import pytest

from orchestrator.cycle.machine import CaseCycle
from orchestrator.cycle.prefetch import PrefetchShell
from orchestrator.errors import RetryableInfraError
from orchestrator.protocols import shell_batch as batch
from orchestrator.protocols.shell import CommandFailed, CommandResult
from orchestrator.protocols.shell_batch import Section
from tests.fakehost import FakeLabHost
from test_cycle import make_case
from test_kernel_shells import LocalShell, busybox_shell


class DroppingShell(LocalShell):
    """This machine's sh; while ``drop`` is set, every round trip fails as a dropped link."""
    drop = False

    def run(self, command, *, timeout, check=True):
        if self.drop:
            raise RetryableInfraError("connection dropped")
        return super().run(command, timeout=timeout, check=check)


@pytest.fixture(params=["sh", "busybox"])
def any_sh(request, tmp_path):
    """A rack server's sh (dash) and a lab guest's (busybox ash)."""
    return LocalShell() if request.param == "sh" else busybox_shell(str(tmp_path))


def test_each_command_of_a_batch_keeps_its_own_status_output_and_error_and_a_failed_stop_ends_it(any_sh):
    sections = [Section("echo a; echo oops >&2; exit 3"), Section("printf 'no newline'"),
                Section("exit 1", stop_on_failure=True), Section("echo never")]
    shell = any_sh
    results = batch.run_batch(shell, sections)
    assert len(shell.commands) == 1
    assert [(r.exit_code, r.stdout, r.stderr) for r in results] == [(3, "a\n", "oops\n"), (0, "no newline", ""),
                                                                   (1, "", "")]
    assert [r.command for r in results] == [s.command for s in sections[:3]]
    token, unpacked = batch.unpack(shell.commands[0])
    assert unpacked == [Section(s.command, stop_on_failure=s.stop_on_failure) for s in sections]
    assert batch.split(CommandResult("x", 0, "not a batch", "", 0.0), sections, token) is None


def test_prefetched_commands_are_answered_from_one_round_trip_until_something_else_runs(tmp_path):
    shell, flag = LocalShell(), tmp_path / "flag"
    ahead = PrefetchShell(shell)
    ahead.prefetch([Section(f"cat {flag}"), Section("echo two"), Section(f"cat {flag}")])
    flag.write_text("changed\n")
    assert ahead.run(f"cat {flag}", timeout=5, check=False).exit_code == 1     # as it was at the batch
    assert ahead.run("echo two", timeout=5).stdout == "two\n"
    assert len(shell.commands) == 1
    ahead.run("true", timeout=5)                       # not foreseen: what was fetched is stale now
    assert ahead.run(f"cat {flag}", timeout=5).stdout == "changed\n"
    assert len(shell.commands) == 3
    ahead.prefetch([Section("echo one"), Section("echo two")])
    ahead.prefetch([Section("echo alone")])            # not batched, yet the older answers are gone
    assert ahead.run("echo one", timeout=5).stdout == "one\n" and len(shell.commands) == 5


def test_a_failed_prefetched_command_names_itself_and_a_dropped_batch_fails_its_first_command_only():
    shell = DroppingShell()
    ahead = PrefetchShell(shell)
    ahead.prefetch([Section("echo bad >&2; exit 4"), Section("echo fine")])
    with pytest.raises(CommandFailed, match=r"`echo bad >&2; exit 4` exited 4: bad"):
        ahead.run("echo bad >&2; exit 4", timeout=5)
    shell.drop = True
    ahead.prefetch([Section("echo one"), Section("echo two")])
    shell.drop = False
    with pytest.raises(RetryableInfraError, match="dropped"):
        ahead.run("echo one", timeout=5)
    assert ahead.run("echo two", timeout=5).stdout == "two\n"      # run again, on its own


def test_a_case_runs_its_preflight_and_arm_in_few_round_trips(stub_kernel_seams):
    host = FakeLabHost()
    result = CaseCycle(host.handles(), make_case()).run().result
    assert result.verdict == "pass", result.reasons
    shell = host.shell
    fired = next(i for i, c in enumerate(shell.commands) if c.startswith("detached:"))
    batched = sum(len(b) for b in shell.batches)
    assert any(len(b) >= 4 and b[0].startswith("cat /proc/sys/kernel/random/boot_id") for b in shell.batches)
    before_injection = fired - sum(len(b) - 1 for b in shell.batches if shell.commands.index(b[0]) < fired)
    assert batched and before_injection <= 6, shell.commands[:fired]


def test_a_host_back_from_its_panic_is_collected_and_restored_in_one_round_trip(stub_kernel_seams):
    host = FakeLabHost()
    result = CaseCycle(host.handles(), make_case()).run().result
    assert result.verdict == "pass", result.reasons
    assert host.journal is None and stub_kernel_seams["vm.panic_on_unrecoverable_memory_failure"] == "0"
    commands = host.shell.commands
    back = max(i for i, c in enumerate(commands) if c.startswith("cat /proc/sys/kernel/random/boot_id")) + 1
    # the dump's looks, then the restore: its reads, the originals written back, and the journal
    # dropped by the host's own check, all answered by one batch
    assert host.shell.batches[-1] == commands[back:], commands[back:]
    assert "rm -f" in commands[-1] and "/armed" in commands[-1]


def test_a_step_asking_for_what_an_earlier_batch_holds_sends_nothing():
    shell = LocalShell()
    ahead = PrefetchShell(shell)
    ahead.prefetch([Section("echo one"), Section("echo two"), Section("echo three")])
    ahead.run("echo one", timeout=5)
    ahead.prefetch([Section("echo two"), Section("echo three")])       # the next step's own
    assert ahead.run("echo two", timeout=5).stdout == "two\n" and len(shell.commands) == 1
    ahead.prefetch([Section("echo three"), Section("echo four")])      # not all held: asked again
    assert len(shell.commands) == 2


def test_a_simulated_host_charges_one_round_trip_per_batch_not_per_command(monkeypatch):
    """bench/bench_fleet.py's hosts model SSH latency: a batch is one round trip, as on a real
    host (charging each command of it made the simulated hosts slower than real ones)."""
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    shell = FakeLabHost(command_s=0.005).shell
    sections = [Section("uname -r"), Section("dmesg"), Section("cat /proc/sys/kernel/random/boot_id")]
    batch.run_batch(shell, sections, timeout=10)
    shell.run("dmesg", timeout=10)
    assert slept == [0.005, 0.005] and len(shell.batches[0]) == 3


@pytest.mark.parametrize("console_says, round_trips", [
    ("kdump-tools: saved vmcore in {crash}/202612011234", 1),      # the dump's reads ride along
    ("kdump: saving to /sysroot{crash}/202612011233/", 2),          # an older one: read again
    ("", 2)])                                                      # no hint: list, then read
def test_the_dump_the_console_named_is_read_in_its_listing_round_trip(tmp_path, console_says, round_trips):
    from types import SimpleNamespace
    from orchestrator.cycle.after_panic import collect_dump
    from orchestrator.kernel.kdump import layout_for
    from orchestrator.transports.fake import FakeConsole
    crash = tmp_path / "crash"
    for stamp in ("202612011233", "202612011234"):
        (crash / stamp).mkdir(parents=True)
        (crash / stamp / f"dmesg.{stamp}").write_text(f"panic of {stamp}\n")
        (crash / stamp / f"vmcoreinfo.{stamp}").write_text("OSRELEASE=7.3.4\nCRASHTIME=1\n")
    console, inner = FakeConsole(), LocalShell()
    console.feed(console_says.format(crash=crash))
    h = SimpleNamespace(kdump=layout_for("debian", str(crash)), shell=PrefetchShell(inner), console=console)
    injected = SimpleNamespace(console_mark=0, epoch=2**40)    # nothing rewritten since
    collected = collect_dump(h, ("202612011233",), injected, record=None)
    assert collected.dump.dump_id == "202612011234" and collected.dump.dmesg == "panic of 202612011234\n"
    assert collected.dump.vmcoreinfo["OSRELEASE"] == "7.3.4"
    assert len(inner.commands) == round_trips, inner.commands
