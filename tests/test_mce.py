"""Machine checks as an injector: the lab-only ``qemu_mce`` firmware injector, where it is
usable (lab x86 machines, nowhere else), the per-delivery semantics, and the example
inventory declaring only injectors its hosts accept. The cycle asking the BMC for a firmware
injector's report is tests/test_cycle_firmware.py's."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.config.applicability import skip_reason
from orchestrator.config.inventory import load_inventory
from orchestrator.config.playbook import Case, Expectation, Limits, load_playbook
from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.errors import ConfigError
from orchestrator.faces.cli.main import main
from orchestrator.kernel import semantics
from orchestrator.kernel.injectors import FirmwareInjector, injector
from orchestrator.protocols.firmware import SEVERITIES
from test_config import GOOD_INVENTORY, write
from test_kernel_shells import FakeShell

REPO = Path(__file__).resolve().parent.parent
KNOB = "vm.panic_on_unrecoverable_memory_failure"


# --- the injector -------------------------------------------------------------------------

def test_qemu_mce_asks_the_firmware_for_an_action_optional_machine_check():
    mce = injector("qemu_mce")
    assert isinstance(mce, FirmwareInjector) and mce.feature == "qemu_mce"
    assert (mce.path, mce.severity, mce.delivery) == ("mce", "srao", "machine-check")
    assert mce.severity in SEVERITIES[mce.path] and mce.reports_late
    assert injector("hwpoison_inject").delivery == "software"
    assert injector("mce_inject").delivery == "machine-check"


def test_qemu_mce_is_x86_only_and_touches_no_host_to_say_so():
    shell = FakeShell([])          # any command would fail the test
    mce = injector("qemu_mce")
    assert mce.unavailable_reason(shell, arch="x86_64") is None
    why = mce.unavailable_reason(shell, arch="aarch64")
    assert why == "qemu_mce: x86 machine checks only (host is aarch64)"
    mce.prepare(shell)
    assert shell.commands == []


def test_the_lab_declares_qemu_mce_on_its_x86_machines_only():
    from orchestrator.vlab.lab.layout import host_features

    assert "qemu_mce" in host_features("x86_64")
    assert "qemu_mce" not in host_features("aarch64")


# --- inventory, applicability --------------------------------------------------------------



@pytest.mark.parametrize("feature", ["qemu_mce", "mce_inject"])
def test_an_aarch64_host_declaring_a_machine_check_injector_is_refused(files, capsys, feature):
    text = GOOD_INVENTORY.replace("features: [hwpoison_inject, kdump, sol]", f"features: [hwpoison_inject, {feature}]")
    assert text != GOOD_INVENTORY
    path = write(files, "inv.yaml", text)
    with pytest.raises(ConfigError, match=f"feature '{feature}' is x86_64 only .*host srv1 is aarch64"):
        load_inventory(path)
    assert main(["inventory", "check", "--no-probe", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _case(name: str, injector_name: str, target: str = "kernel-rodata", value: str = "1") -> Case:
    return Case(name=name, injector=injector_name, target=target, pfn=None, sysctls=((KNOB, value),),
                expect=Expectation(outcome="matrix"), limits=Limits())


def test_mce_cases_run_only_where_the_host_declares_qemu_mce():
    inventory = load_inventory(REPO / "inventories/example-rack.yaml")
    playbook = load_playbook(REPO / "playbooks/nightly.yaml")
    mce_cases = [c for c in playbook.cases if c.injector == "qemu_mce"]
    assert {c.target for c in mce_cases} >= {"kernel-rodata", "slab", "pgtable", "user-anon"}
    for host in inventory.hosts:                  # real servers, x86 and arm: none has the lab's BMC
        for case in mce_cases:
            assert skip_reason(host, case) == "host lacks feature(s) qemu_mce"
    lab_host = replace(inventory.host("spr-07"), features=frozenset({"qemu_mce", "kdump"}))
    assert all(skip_reason(lab_host, case) is None for case in mce_cases)


# --- the example inventory ----------------------------------------------------------------

#: What /proc/cpuinfo says on each example platform (the injectors' vendor probe reads it).
CPUINFO = {"sapphire-rapids": "vendor_id\t: GenuineIntel\nflags\t\t: fpu mca mce\n",
           "ampere-altra": "flags\t\t: fp asimd\n"}


def test_example_inventory_checks_clean_and_declares_only_usable_injectors(capsys, monkeypatch):
    monkeypatch.setenv("LAB_BMC_PASSWORD", "unused")
    example = REPO / "inventories/example-rack.yaml"
    assert main(["inventory", "check", "--no-probe", str(example)]) == 0
    assert "will inject into: altra-01, altra-02, spr-07" in capsys.readouterr().out
    for host in load_inventory(example).hosts:
        for name in {"mce_inject", "qemu_mce"} & host.features:   # the ones that refuse by CPU or arch
            shell = FakeShell([(r"cpuinfo", CPUINFO[host.platform]), (r"", "present module\n")])
            assert injector(name).unavailable_reason(shell, arch=host.arch) is None, (host.name, name)
    # the bug this guards against: mce_inject declared on an Intel server, which it refuses
    shell = FakeShell([(r"cpuinfo", CPUINFO["sapphire-rapids"]), (r"", "present module\n")])
    assert "only AMD CPUs" in injector("mce_inject").unavailable_reason(shell, arch="x86_64")


# --- semantics per delivery ---------------------------------------------------------------

def test_machine_check_rows_are_measured_rows_and_fall_back_to_software():
    deliveries = semantics.matrix()["deliveries"]
    assert set(deliveries) <= set(semantics.DELIVERIES) - {"software"}
    for name, rows in deliveries["machine-check"].items():
        assert set(rows) <= set(semantics.matrix()["semantics"][name]["classes"])
    on = {KNOB: "1"}
    mce = semantics.expectation("v10-like", "slab", on, delivery="machine-check")
    assert mce.panic and mce.reason.startswith("v10-like via machine-check, slab")
    file = semantics.expectation("v10-like", "user-file", on, delivery="machine-check")
    assert not file.panic and file.reason.startswith("v10-like, user-file")   # not measured: the software row
    with pytest.raises(ConfigError, match="unknown delivery"):
        semantics.expectation("v10-like", "slab", on, delivery="carrier-pigeon")


@pytest.fixture
def differing_matrix(monkeypatch):
    """A matrix where slab behaves differently through a machine check (as a v4-like kernel
    might): the resolver must pick the row by the case's injector."""
    data = copy.deepcopy(semantics.matrix())
    data["deliveries"]["machine-check"]["v10-like"]["slab"] = {
        "label": "get hwpoison page", "result": "Ignored", "panics": False}
    monkeypatch.setattr(semantics, "matrix", lambda: data)


def test_resolver_takes_the_injectors_delivery(differing_matrix):
    resolver = ExpectationResolver()
    given = semantics.KernelSemantics("v10-like", ("given by the test",))
    resolver.probe = lambda shell, **where: given          # the host's semantics are not under test
    software = resolver(_case("s", "hwpoison_inject", "slab"), shell=None)
    mce = resolver(_case("m", "qemu_mce", "slab"), shell=None)
    assert (software.outcome, software.action_label) == ("panic", "reserved kernel page")
    assert (mce.outcome, mce.action_label, mce.dump) == ("survive", "get hwpoison page", False)
