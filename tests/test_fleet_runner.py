"""The fleet runner on scripted hosts: a run kept as its folder and resumed from it, a host
left armed restored first, a host leased by someone else, a host lost mid-run, a restore
that cannot happen, and a run where nothing reached a verdict. The lease scripts run for
real (this machine's sh, in the fake host's state folder)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace

import pytest

from orchestrator.config.model import Inventory
from orchestrator.config.playbook import Limits, Playbook
from orchestrator.cycle.arm_journal import ArmRecord
from orchestrator.fleet import lease
from orchestrator.fleet.host_handles import CommandLog, HostSession
from orchestrator.fleet.plan import RunPlan
from orchestrator.fleet.run_folder import RunFolder
from orchestrator.fleet.runner import Runner
from orchestrator.results import store
from tests.fakehost import FakeLabHost
from tests.test_cycle import make_case

PANIC = "vm.panic_on_unrecoverable_memory_failure"
pytestmark = pytest.mark.usefixtures("stub_kernel_seams")    # tests/conftest.py


def plan_for(host: FakeLabHost, cases, tmp_path) -> RunPlan:
    inventory = Inventory(path=tmp_path / "inv.yaml", hosts=(host.handles().host,), digest="i" * 64)
    return RunPlan(inventory=inventory, playbook=Playbook(path=tmp_path / "pb.yaml", name="pb",
                                                          cases=tuple(cases), digest="p" * 64))


def opener(host: FakeLabHost, **handle_changes):
    @contextmanager
    def open_host(h, host_dir, *, commands_log=None):
        yield HostSession(handles=replace(host.handles(), **handle_changes), commands=CommandLog(commands_log),
                          lease_shell=host.shell)
    return open_host


def cases(*names, outcome="panic", **changes):
    return [make_case(outcome=outcome, name=n, **changes) for n in names]


def run(host, folder, **handle_changes):
    return Runner(folder, open_host=opener(host, **handle_changes)).run()


def test_resume_keeps_finished_cases_restores_the_host_left_armed_and_runs_the_rest(tmp_path, stub_kernel_seams):
    host = FakeLabHost()
    folder = RunFolder.create(tmp_path / "results", plan_for(host, cases("c1", "c2", "c3"), tmp_path))
    first = Runner(folder, open_host=opener(host)).run().cases[0]
    for name in ("c2", "c3"):                    # as if SIGKILLed during c2: only c1's record made it
        (folder.run_dir / "fake1" / name / "result.json").unlink()
    host.journal = ArmRecord(sysctls=((PANIC, "0"),), kdump_loaded=True, run_id=folder.run_id, case="c2",
                             boot_id=host.boot_id).lines()
    stub_kernel_seams[PANIC] = "1"               # ... with the host armed

    resumed = RunFolder(folder.run_dir, folder.run_id, folder.started_at, folder.plan)
    resumed.reload()
    result = run(host, resumed)
    assert [c.case for c in result.cases] == ["c1", "c2", "c3"]
    assert result.exit_code() == 0, [(c.case, c.verdict, c.reasons) for c in result.cases]
    assert result.cases[0] == first                            # the finished verdict is kept as it was
    assert any("left armed by run" in r and "case c2" in r for r in result.cases[1].recovery)
    assert host.journal is None and stub_kernel_seams[PANIC] == "0"
    assert len(store.load_case_results(folder.run_dir)) == 3
    assert store.load_run(folder.run_dir).cases == result.cases


def test_a_host_leased_by_someone_else_is_an_error_naming_the_holder_and_nothing_is_injected(tmp_path):
    host = FakeLabHost()
    other = lease.Holder(run_id="their-run", controller="ctl-b:7", user="alice", token="t0k")
    lease.take(host.shell, "fake1", host.state_dir, other, ttl_s=600)
    result = run(host, RunFolder.create(tmp_path / "results", plan_for(host, cases("c1"), tmp_path)))
    case = result.cases[0]
    assert (case.verdict, case.blame) == ("error", "lab") and result.exit_code() == 3
    assert "leased by alice on ctl-b:7 (run their-run" in case.reasons[0] and "nothing was injected" in case.reasons[0]
    assert not [c for c in host.shell.commands if c.startswith("detached: ")]


def test_our_lease_is_given_back_after_each_case(tmp_path):
    host = FakeLabHost(behaviour="survive")
    run(host, RunFolder.create(tmp_path / "results", plan_for(host, cases("c1", outcome="survive"), tmp_path)))
    assert lease.read(host.shell, "fake1", host.state_dir) == {}
    assert any("lease" in c for c in host.shell.commands)


def test_a_lost_host_ends_its_remaining_cases_at_once_naming_where_it_was_lost(tmp_path):
    host = FakeLabHost(behaviour="hang")           # panics, never reboots; and no BMC to recover it
    folder = RunFolder.create(tmp_path / "results", plan_for(host, cases("c1", "c2", "c3"), tmp_path))
    started = time.monotonic()
    result = run(host, folder, power=None)
    first, *rest = result.cases
    assert first.verdict == "error" and "no BMC" in first.reasons[0]
    assert all(c.verdict == "error" and c.reasons[0].startswith("host lost in case c1: ") for c in rest)
    assert all(c.seconds == 0 and not c.timings for c in rest)          # no cycle ran for them
    assert time.monotonic() - started < 60


def test_a_restore_that_cannot_happen_is_an_error_left_armed_and_exit_3(tmp_path, stub_kernel_seams):
    host = FakeLabHost(behaviour="survive")
    host.refuses.add((PANIC, "0"))                  # armed to 1, the kernel will not go back to 0
    result = run(host, RunFolder.create(tmp_path / "results", plan_for(
        host, cases("c1", outcome="survive", sysctls=((PANIC, "1"),)), tmp_path)))
    case = result.cases[0]
    assert (case.verdict, case.left_armed, result.exit_code()) == ("error", True, 3)
    assert any("restore" in r and "refused" in r for r in case.reasons)
    assert result.left_armed() == ("fake1",) and host.journal is not None      # kept for disarm


def test_a_run_where_nothing_reached_a_verdict_is_not_green(tmp_path):
    host = FakeLabHost()
    only_arm = cases("c1", "c2", limits=Limits(arches=("aarch64",)))
    result = run(host, RunFolder.create(tmp_path / "results", plan_for(host, only_arm, tmp_path)))
    assert [c.verdict for c in result.cases] == ["skip", "skip"] and result.exit_code() == 4


def test_a_changed_playbook_refuses_to_resume(tmp_path):
    from test_config import GOOD_PLAYBOOK, write

    inventory = write(tmp_path, "inv.yaml", "version: 1\nhosts:\n  - {name: h1, arch: x86_64, destructive: true, "
                                            "ssh: {address: 127.0.0.1, host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"
                                            "AAAAIExample\"}}\n")
    playbook = write(tmp_path, "pb.yaml", GOOD_PLAYBOOK)
    folder = RunFolder.create(tmp_path / "results", RunPlan.load(inventory, playbook))
    assert RunFolder.open(folder.run_dir).plan.playbook.digest == folder.plan.playbook.digest
    playbook.write_text(GOOD_PLAYBOOK.replace("panic: 30", "panic: 31"))
    with pytest.raises(Exception, match="changed since this run started"):
        RunFolder.open(folder.run_dir)


def test_a_results_folder_that_refuses_writes_stops_the_run_after_the_case_in_flight_restored_its_host(
        tmp_path, stub_kernel_seams, monkeypatch):
    import errno

    host = FakeLabHost()
    folder = RunFolder.create(tmp_path / "results", plan_for(host, cases("c1", "c2", "c3"), tmp_path))
    real_replace, seen = store._replace_atomically, []

    def full_disk_from_c2_on(path, payload):
        if any(c == "c2" for c, _ in seen):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(path, payload)

    monkeypatch.setattr(store, "_replace_atomically", full_disk_from_c2_on)
    runner = Runner(folder, open_host=opener(host), on_state=lambda h, case, state: seen.append((case, state)))
    c1 = (folder.run_dir / "fake1" / "c1" / "result.json")
    with pytest.raises(store.ResultsWriteError, match="No space left on device"):
        runner.run()
    assert ("c2", "restored") in seen and not any(c == "c3" for c, _ in seen)    # nothing new started
    assert host.journal is None and stub_kernel_seams[PANIC] == "0"             # not left armed
    store.load_run(folder.run_dir)                                               # still readable
    assert [r.case for r in store.load_case_results(folder.run_dir)] == ["c1"] and c1.is_file()
    assert not list(folder.run_dir.rglob("*.tmp"))


def test_a_command_log_the_results_disk_refuses_costs_the_log_never_the_command(tmp_path):
    log = CommandLog(tmp_path / "gone" / "commands.log")     # its folder does not exist: every write fails
    log("$ echo 0 > /proc/sys/vm/panic_on_unrecoverable_memory_failure")
    log("-> exit 0")
    assert isinstance(log.error, OSError) and not (tmp_path / "gone").exists()


def count_sections(monkeypatch) -> list[str]:
    from orchestrator.results import html

    rendered, real = [], html._section
    monkeypatch.setattr(html, "_section", lambda case, anchor: rendered.append(anchor) or real(case, anchor))
    return rendered


def test_a_case_s_report_parts_are_made_as_it_is_recorded_not_by_the_run_s_last_report(tmp_path, monkeypatch):
    from tests.test_results_writers import make_case as finished

    rendered, host = count_sections(monkeypatch), FakeLabHost()
    folder = RunFolder.create(tmp_path, plan_for(host, cases("a", "b"), tmp_path))
    monkeypatch.setattr(folder, "assemble", lambda real=folder.assemble: rendered.append("assembled") or real())
    name = host.handles().host.name
    folder.record(finished(name, "b", "pass"))          # plan order: a before b; b finishes first
    folder.record(finished(name, "a", "pass"))
    made_by_record = [r for r in rendered if r != "assembled"]
    assert len(made_by_record) == 2, rendered
    del rendered[:]
    run = folder.assemble()
    assert [c.case for c in run.cases] == ["a", "b"] and rendered == ["assembled"]   # nothing made again


def test_a_shared_folder_taking_in_other_writers_cases_keeps_the_parts_of_those_it_knew(tmp_path, monkeypatch):
    from tests.test_results_writers import make_case as finished

    plan = plan_for(FakeLabHost(), cases("a", "b", "c"), tmp_path)
    theirs = RunFolder.create(tmp_path, plan)
    theirs.record(finished("h", "a", "pass"))           # another worker's case
    rendered = count_sections(monkeypatch)
    ours = RunFolder(theirs.run_dir, theirs.run_id, theirs.started_at, plan, shared=True)
    monkeypatch.setattr("orchestrator.fleet.run_folder.REPORT_INTERVAL_S", 0.0)   # a report at each case
    monkeypatch.setattr("orchestrator.fleet.run_folder.REPORT_SHARE_LIMIT", 0.0)
    ours.record(finished("h", "b", "pass"))             # reads theirs in, then assembles
    ours.record(finished("h", "c", "pass"))             # reads theirs in again: the same case
    ours.assemble()
    assert sorted(rendered) == sorted(set(rendered)) and len(rendered) == 3, rendered
