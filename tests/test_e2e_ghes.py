"""Firmware-first memory errors end to end on an aarch64 RAS lab machine (QEMU 11, EDK2, GHES):
the lab BMC, playing the platform's RAS firmware, reports a CPER memory error for the target
page; the kernel's GHES handler takes it from there. One lab machine for the whole module."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.config.inventory import load_inventory
from test_e2e_orchestrator import by_case, run_playbook
from vlabs import on_host

pytestmark = [pytest.mark.vlab, pytest.mark.aarch64]


def test_the_aarch64_lab_machine_is_a_ras_platform(vlab_arm):
    host = load_inventory(vlab_arm).hosts[0]
    assert "ghes" in host.features, ("QEMU 11 could not be had: the lab fell back to the system QEMU "
                                     "(see the `lab up` log)")


def test_ghes_reports_are_judged_by_severity_and_sysctl(vlab_arm, tmp_path):
    code, run, run_dir = run_playbook(vlab_arm, "tests/playbooks/ghes.yaml", tmp_path)
    cases = by_case(run)
    on, off, fatal = cases["ghes-text-on"], cases["ghes-text-off"], cases["ghes-fatal"]
    assert [c.verdict for c in (off, on, fatal)] == ["pass"] * 3, [c.reasons for c in (off, on, fatal)]
    assert code == 0
    # recoverable report, sysctl 1: the new signature, on the console and in the dump
    needle = f"Memory failure: {on.pfn:#x}: unrecoverable page"
    assert any(e.source == "console" and needle in e.text for e in on.evidence)
    assert any(e.source == "dump-dmesg" and needle in e.text for e in on.evidence)
    assert on.boot_id_after != on.boot_id_before
    # it came through GHES, not an in-guest injection: the CPER record is on the console
    console = (run_dir / on.artifacts["console.log"]).read_text(errors="replace")
    assert "[Hardware Error]: event severity: recoverable" in console
    assert f"physical_address: {on.pfn << 12:#018x}" in console
    # sysctl 0: "Ignored", and the host kept its boot
    assert any(f"{off.pfn:#x}: recovery action for reserved kernel page: Ignored" in e.text for e in off.evidence)
    assert off.boot_id_after == off.boot_id_before
    # fatal report: GHES panics by itself, never with the memory-failure signature
    assert fatal.expect["signature"] == "ghes_fatal"
    assert any(e.source == "dump-dmesg" and "Kernel panic - not syncing: GHES: Fatal hardware error" in e.text
               for e in fatal.evidence)
    assert not any("unrecoverable page" in e.text for e in fatal.evidence)


def test_power_button_is_the_acpi_one(vlab_arm):
    """Last: it powers the machine off. Booted by EDK2 the guest has ACPI, so the button is the
    ACPI power button (evdev) as on x86, not the PL061 GPIO line of a firmware-less boot."""
    from orchestrator.transports.ipmi import IpmiPower
    from orchestrator.vlab.lab import lifecycle as lab

    host = load_inventory(vlab_arm).hosts[0]
    assert "power-button.sh evdev /dev/input/event" in on_host(vlab_arm, host.name, "ps")
    machine, = lab.read_lab()
    power = IpmiPower(host.bmc)
    try:
        assert power.raw("soft off", 0x00, 0x02, bytes([5]))[0] == 0      # chassis control: soft off
        deadline = time.monotonic() + 30
        while power.status() != "off" and time.monotonic() < deadline:
            time.sleep(0.5)                 # polling the BMC against a deadline
        assert power.status() == "off"
    finally:
        power.close()
    assert "VLAB: power button -> poweroff" in (Path(machine.machine_dir) / "console.log").read_text(errors="replace")
