"""The per-case state machine on fake transports: panic, survive, wedge -> power cycle,
stale dump ignored, SSH drop during inject, and a verifier that can fail."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.cycle import phases as cycle_mod
from orchestrator.config.playbook import DEFAULT_DEADLINES, Case, Expectation, Limits
from orchestrator.cycle.machine import CaseCycle
from tests.fakehost import FakeLabHost


pytestmark = pytest.mark.usefixtures("stub_kernel_seams")    # tests/conftest.py


def make_case(outcome="panic", **overrides) -> Case:
    deadlines = dict(DEFAULT_DEADLINES, panic=2.0, survive=0.5, dump=5.0, wedge=10.0, preflight=5.0)
    expect = Expectation(outcome=outcome, action_label="reserved kernel page", action_result="Ignored",
                         signature="new" if outcome == "panic" else "any", dump=outcome == "panic")
    case = Case(name="c1", injector="hwpoison_inject", target="kernel-rodata", pfn=None,
                sysctls=(("vm.panic_on_unrecoverable_memory_failure", "1" if outcome == "panic" else "0"),),
                expect=expect, limits=Limits(), deadlines=deadlines)
    return replace(case, **overrides)


def states(result) -> list[str]:
    return [t.state for t in result.timings]


def test_panic_case_passes_with_console_and_dump_evidence(stub_kernel_seams):
    host = FakeLabHost()
    old_boot = host.boot_id
    result = CaseCycle(host.handles(), make_case()).run().result
    assert result.verdict == "pass", result.reasons
    assert states(result)[:8] == ["preflight", "armed", "targeted", "injected", "panicked", "dumped", "collected", "verified"]
    assert result.pfn == 0x38830 and result.boot_id_before == old_boot != result.boot_id_after
    assert result.dump["id"] == "202611251737" and result.dump["vmcoreinfo"]["CRASHTIME"]
    assert any(e.source == "console" and "unrecoverable page" in e.text for e in result.evidence)
    assert any(e.source == "dump-dmesg" and "unrecoverable page" in e.text for e in result.evidence)
    assert result.panic_after_inject_s is not None and result.panic_after_inject_s >= 0
    # sysctls restored as recorded once the case is over
    assert stub_kernel_seams["vm.panic_on_unrecoverable_memory_failure"] == "0"


def test_survive_case_passes_and_host_keeps_its_boot():
    host = FakeLabHost(behaviour="survive")
    result = CaseCycle(host.handles(), make_case(outcome="survive")).run().result
    assert result.verdict == "pass", result.reasons
    assert "survived" in states(result) and "panicked" not in states(result)
    assert result.boot_id_before == result.boot_id_after
    # the detached injection's own outcome (the -EBUSY of an Ignored page) is kept as evidence
    assert any(e.source == "inject" and e.text == "exit status 16, output: sh: write error: Device or resource busy"
               for e in result.evidence), result.evidence
    fired = [c for c in host.shell.commands if c.startswith("detached: ")]
    assert len(fired) == 1 and fired[0].endswith("> /tmp/memfail-orchestrator/adhoc/c1/inject")
    assert "inject.rc" not in fired[0]


def test_wrong_expectation_fails_with_the_evidence():
    host = FakeLabHost(behaviour="survive", label="free buddy page", result="Recovered")
    result = CaseCycle(host.handles(), make_case(outcome="survive")).run().result
    assert result.verdict == "fail"
    assert any("'free buddy page'" in r and "'reserved kernel page'" in r for r in result.reasons), result.reasons


def test_expected_panic_that_never_comes_fails_fast_without_power_cycling():
    host = FakeLabHost(behaviour="no-panic")
    result = CaseCycle(host.handles(), make_case()).run().result
    assert result.verdict == "fail"
    assert host.power.actions == [], "a host that kept running is not wedged"
    assert any("no kernel panic line" in r for r in result.reasons)
    assert any("recovery action for reserved kernel page: Ignored" in r for r in result.reasons)


def test_panic_naming_another_pfn_fails():
    host = FakeLabHost(panic_pfn=0x1234)
    result = CaseCycle(host.handles(), make_case()).run().result
    assert result.verdict == "fail"
    assert any("names pfn 0x1234" in r for r in result.reasons), result.reasons


def test_wedged_host_is_recovered_by_nmi_then_power_cycle_and_judged_from_console():
    host = FakeLabHost(behaviour="hang", writes_dump=False)
    case = make_case(kdump="unload", expect=Expectation(outcome="panic", action_label="reserved kernel page",
                                                         action_result="Ignored", signature="new", dump=False))
    case = replace(case, deadlines=dict(case.deadlines, dump=1.0, nmi=0.5))
    result = CaseCycle(host.handles(), case).run().result
    assert result.verdict == "pass", result.reasons
    assert "wedged" in states(result)
    assert "recovered" in states(result) and "dumped" not in states(result)
    assert host.power.actions[:1] == ["nmi"] and "off" in host.power.actions and "on" in host.power.actions
    assert any("power cycle" in r for r in result.recovery)
    assert result.boot_id_after != result.boot_id_before


def test_wedged_host_without_bmc_is_an_infrastructure_error():
    host = FakeLabHost(behaviour="hang", writes_dump=False)
    handles = host.handles()
    handles.power = None
    case = make_case(expect=Expectation(outcome="panic", signature="new", dump=False))
    case = replace(case, deadlines=dict(case.deadlines, dump=1.0))
    result = CaseCycle(handles, case).run().result
    assert result.verdict == "error"
    assert "no BMC" in result.reasons[0]


def test_stale_dump_is_never_taken_for_the_new_one():
    host = FakeLabHost(writes_dump=False)
    host.add_stale_dump()
    result = CaseCycle(host.handles(), make_case()).run().result
    # the kernel panicked as it should; the missing dump is the crash kernel's doing, not a kernel fail
    assert (result.verdict, result.blame) == ("error", "kdump")
    assert result.dump is None
    assert any("no new kdump dump" in r for r in result.reasons)


def test_dump_rewritten_in_the_same_minute_is_found_by_its_mtime():
    host = FakeLabHost(dump_stamp="202611240101")
    host.add_stale_dump()                       # same directory name as the coming dump
    result = CaseCycle(host.handles(), make_case()).run().result
    assert result.verdict == "pass", result.reasons
    assert result.dump["id"] == "202611240101"
    assert int(result.dump["vmcoreinfo"]["CRASHTIME"]) > 1_795_628_000


def test_ssh_drop_during_inject_is_observed_not_an_error():
    host = FakeLabHost(ssh_drops_on_inject=True)
    result = CaseCycle(host.handles(), make_case()).run().result
    assert result.verdict == "pass", result.reasons
    assert any(e.source == "ssh" and "dropped" in e.text for e in result.evidence)


def test_host_not_marked_destructive_is_refused_before_anything_runs():
    host = FakeLabHost()
    result = CaseCycle(host.handles(destructive=False), make_case()).run().result
    assert result.verdict == "error" and "destructive" in result.reasons[0]
    assert not any("corrupt-pfn" in c for c in host.shell.commands)


def test_dead_console_on_a_sol_host_is_an_error_not_a_fail():
    host = FakeLabHost()
    host.console.close()
    result = CaseCycle(host.handles(), make_case()).run().result
    assert result.verdict == "error"
    assert "console" in result.reasons[0]


def test_missing_sysctl_skips_with_the_reason(stub_kernel_seams):
    host = FakeLabHost()
    case = make_case(limits=Limits(sysctls_present=("vm.not_in_this_kernel",)))
    result = CaseCycle(host.handles(), case).run().result
    assert result.verdict == "skip" and "lacks sysctl vm.not_in_this_kernel" in result.reasons[0]


def test_host_without_a_console_is_judged_from_ssh_and_the_dump():
    host = FakeLabHost()
    handles = host.handles(features=("hwpoison_inject", "kdump"))
    handles.console = None
    result = CaseCycle(handles, make_case()).run().result
    assert result.verdict == "pass", result.reasons
    assert any("host stopped answering" in t.note for t in result.timings)
    assert "lost" in states(result) and "panicked" not in states(result)
    assert any(e.source == "dump-dmesg" and "unrecoverable page" in e.text for e in result.evidence)


def test_survive_case_that_panics_stays_a_fail_even_when_recovery_then_fails():
    host = FakeLabHost(behaviour="hang", writes_dump=False)
    handles = host.handles()
    handles.power = None
    case = make_case(outcome="survive")
    case = replace(case, deadlines=dict(case.deadlines, dump=1.0))
    result = CaseCycle(handles, case).run().result
    assert result.verdict == "fail"
    assert "the kernel panicked" in result.reasons[0] and "no BMC" in result.reasons[1]


def test_a_bug_in_one_case_is_an_error_verdict_not_a_crash(monkeypatch):
    def broken(shell, cls, arch, page_size, timeout):
        raise KeyError("boom")
    monkeypatch.setattr(cycle_mod, "select_target", broken)
    result = CaseCycle(FakeLabHost().handles(), make_case()).run().result
    assert result.verdict == "error" and "internal error: KeyError" in result.reasons[0]


def test_unloaded_crash_kernel_is_reloaded_when_the_host_kept_its_boot():
    host = FakeLabHost(behaviour="survive")
    case = make_case(outcome="survive", kdump="unload")
    result = CaseCycle(host.handles(), case).run().result
    assert result.verdict == "pass", result.reasons
    assert "kexec -p -u" in host.shell.commands
    assert any(c.startswith("kdump-config load") for c in host.shell.commands)
    assert "restore: reloaded the crash kernel" in result.recovery


def test_inventory_arch_that_disagrees_with_the_host_is_an_error_before_injecting():
    host = FakeLabHost()
    handles = host.handles()
    handles.host = replace(handles.host, arch="aarch64")
    result = CaseCycle(handles, make_case()).run().result
    assert result.verdict == "error" and "the host says x86_64" in result.reasons[0]
    assert not any("corrupt-pfn" in c for c in host.shell.commands)


def test_arm_commands_get_the_arm_deadline_and_an_overrun_arm_is_an_error(monkeypatch):
    host = FakeLabHost(behaviour="survive")
    timeouts = {}
    real_run = host.shell.run

    def run(command, *, timeout, check=True):
        timeouts[command] = timeout
        return real_run(command, timeout=timeout, check=check)
    monkeypatch.setattr(host.shell, "run", run)
    case = make_case(outcome="survive", kdump="unload")
    result = CaseCycle(host.handles(), replace(case, deadlines=dict(case.deadlines, arm=7.0))).run().result
    assert result.verdict == "pass", result.reasons
    assert 0 < timeouts["kexec -p -u"] <= 7.0

    # an arm phase out of time starts no further command: the case is an error naming the deadline
    result = CaseCycle(FakeLabHost().handles(), replace(case, deadlines=dict(case.deadlines, arm=1e-9))).run().result
    assert result.verdict == "error" and "arm: no progress within" in result.reasons[0], result.reasons
    assert "infra-error" in states(result)


def test_the_cycle_returns_its_artifacts_with_the_result():
    host = FakeLabHost()
    run = CaseCycle(host.handles(), make_case()).run()
    assert run.result.verdict == "pass", run.result.reasons
    assert any("unrecoverable page" in line.text for line in run.console)
    assert "unrecoverable page" in run.dump_dmesg
    assert run.panic is not None and run.panic.noticed_t >= run.panic.t


def test_a_transient_ssh_failure_in_preflight_is_retried_within_its_deadline():
    # A late sshd banner on the case's first connection (the drill in
    # tests/drills/test_drills_transport.py) was an error verdict in 1.3 s.
    from orchestrator.errors import RetryableInfraError
    host = FakeLabHost(behaviour="survive")
    answer, failed = host.shell.handler, []

    def banner_late_once(command):
        # twice: the preflight's reads batched in one round trip (cycle/ahead.py), then the
        # host-facts probe alone once the batch's connection failed
        if "KernelPageSize" in command and len(failed) < 2:
            failed.append(command)
            raise RetryableInfraError("Error reading SSH protocol banner")
        return answer(command)

    host.shell.handler = banner_late_once
    result = CaseCycle(host.handles(), make_case(outcome="survive")).run().result
    assert result.verdict == "pass", result.reasons
    assert failed and any("retried" in note and "banner" in note for note in result.recovery), result.recovery


def test_ssh_going_quiet_after_the_injection_under_a_healthy_silent_console_is_not_a_lost_host():
    host = FakeLabHost(behaviour="survive")
    reachable, refused = host.shell.reachable, []

    def blackholed_for_a_while():   # the first polls after the injection find SSH gone
        if host.injected and len(refused) < 3:
            refused.append(1)
            return False
        return reachable()

    host.shell.reachable = blackholed_for_a_while
    case = make_case(outcome="survive", deadlines=dict(make_case().deadlines, survive=10.0))
    result = CaseCycle(host.handles(), case).run().result
    assert result.verdict == "pass", result.reasons
    assert len(refused) == 3 and host.power.actions == [], "a live host is never power-cycled"
    assert "survived" in states(result) and "lost" not in states(result)


def test_a_host_that_answers_ssh_needs_no_bmc_in_preflight():
    # A slow BMC (replies 2 s late: pyghmi's login never completes) failed every case in
    # preflight although nothing in a survive case needs power.
    from orchestrator.errors import RetryableInfraError
    host = FakeLabHost(behaviour="survive")

    def no_answer():
        raise RetryableInfraError("BMC 127.0.0.1:623: get power: no answer (IpmiException)")

    host.power.status = no_answer
    result = CaseCycle(host.handles(), make_case(outcome="survive")).run().result
    assert result.verdict == "pass", result.reasons


def test_a_host_that_does_not_answer_ssh_is_powered_on_through_its_bmc_in_preflight():
    host = FakeLabHost(behaviour="survive")
    host.up, host.reboot_after_probes = False, 10**6       # off: only the BMC brings it up
    host.power.state = "off"
    result = CaseCycle(host.handles(), make_case(outcome="survive")).run().result
    assert result.verdict == "pass", result.reasons
    assert host.power.actions[:1] == ["on"] and any("powered on" in r for r in result.recovery)
