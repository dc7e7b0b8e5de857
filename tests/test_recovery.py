"""Bringing a wedged host back (cycle/recovery.py) on fake transports: NMI where the BMC
takes one, a serial BREAK + SysRq c over SOL where it does not, power cycles last."""

from __future__ import annotations

from orchestrator.cycle.recovery import recover_wedged_host
from tests.fakehost import FakeLabHost

ARM = ("hwpoison_inject", "kdump", "sol", "sol_break", "nmi")   # diag refused: no NMI on arm64 virt


def wedge(behaviour: str = "stuck", **host_args) -> FakeLabHost:
    host = FakeLabHost(behaviour=behaviour, **host_args)
    host.shell.fire_detached("echo 0x38830 > /sys/kernel/debug/hwpoison/corrupt-pfn", timeout=5, output="x")
    assert not host.up and host.wedged
    return host


def recover(host: FakeLabHost, features, *, grace: float = 1.0) -> tuple[list[str], str]:
    """``grace``: room for the 4 probes after which the fake host answers (a wait for a new
    boot probes every SSH_POLL_SLOW_S)."""
    log: list[str] = []
    old = host.boot_id
    after = recover_wedged_host(host.handles(features=features), old, 5.0, log, nmi_grace_s=grace)
    assert after.boot_id != old
    return log, after.boot_id


def test_refused_nmi_is_followed_by_break_and_sysrq_crash_without_power_cycle():
    host = wedge(nmi_supported=False)
    log, _ = recover(host, ARM)
    assert host.console.breaks == ["c"]
    assert host.power.actions == [], "came back through kdump: no power cycle"
    assert log[0] == "wedged: the BMC does not support NMI"
    assert "wedged: serial BREAK + SysRq c sent over SOL (no NMI)" in log
    assert "wedged: the console shows 'sysrq triggered crash'" in log


def test_host_without_nmi_feature_gets_the_break_straight_away():
    host = wedge(nmi_supported=False)
    log, _ = recover(host, ("kdump", "sol", "sol_break"))
    assert host.console.breaks == ["c"] and host.power.actions == []
    assert not any("NMI" in line and "BREAK" not in line for line in log), log


def test_taken_nmi_that_brings_nothing_back_goes_to_the_power_cycle_not_the_break():
    host = wedge()      # the fake's NMI is taken and does nothing for a stuck host
    log, _ = recover(host, ARM)
    assert host.console.breaks == []
    assert host.power.actions[0] == "nmi" and "off" in host.power.actions and "on" in host.power.actions
    assert any(line.startswith("wedged: no reboot within") and "the NMI" in line for line in log), log


def test_break_into_a_dead_kernel_times_out_then_power_cycles():
    host = wedge("hang", nmi_supported=False, writes_dump=False)   # panicked without kdump: no SysRq
    log, _ = recover(host, ARM)
    assert host.console.breaks == ["c"]
    assert "off" in host.power.actions and "on" in host.power.actions
    assert any("of the BREAK + SysRq" in line for line in log), log
    assert not any("sysrq triggered crash" in line for line in log)


def test_console_that_cannot_send_a_break_is_noted_and_power_cycled():
    host = wedge(nmi_supported=False)
    host.console.break_supported = False
    log, _ = recover(host, ARM)
    assert any(line.startswith("wedged: no serial BREAK over SOL") for line in log), log
    assert "off" in host.power.actions


def test_no_break_without_the_sol_break_feature():
    host = wedge(nmi_supported=False)
    log, _ = recover(host, ("kdump", "sol", "nmi"))
    assert host.console.breaks == [] and "off" in host.power.actions
