"""The semantics matrix (semantics.yaml), the non-crashing probe and the expectations."""

from __future__ import annotations

import os

import pytest

from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.kernel.pages import PAGE_CLASSES
from orchestrator.kernel.semantics import (PANIC_KIND, SEMANTICS, SemanticsUnknown, decide_semantics,
                                           expectation, matrix, probe_semantics, semantics_named)
from orchestrator.kernel.signatures import PANIC_KINDS
from test_kernel_shells import FakeShell, LocalShell

KNOB, RECOVERY = "vm.panic_on_unrecoverable_memory_failure", "vm.memory_failure_recovery"
KERNEL_RESERVED = ("kernel-rodata", "kernel-text", "kernel-data", "reserved-low")


def test_matrix_has_every_class_for_every_semantics():
    for name in SEMANTICS:
        assert set(matrix()["semantics"][name]["classes"]) == set(PAGE_CLASSES), name
    assert set(PANIC_KIND.values()) <= set(PANIC_KINDS)


@pytest.mark.parametrize("page_class", PAGE_CLASSES)
def test_v10_like(page_class):
    on = expectation("v10-like", page_class, {KNOB: "1"})
    off = expectation("v10-like", page_class, {KNOB: "0"})
    kernel_owned = page_class in KERNEL_RESERVED + ("slab", "pgtable")
    assert on.panic is kernel_owned and on.signature == ("new" if kernel_owned else None)
    assert not off.panic and off.signature is None
    assert on.action_label == off.action_label == (
        "reserved kernel page" if kernel_owned else
        {"free-buddy": "free buddy page", "user-anon": "dirty LRU page",
         "user-file": "clean LRU page"}[page_class])
    assert on.action_result == ("Ignored" if kernel_owned else "Recovered")


@pytest.mark.parametrize("page_class", PAGE_CLASSES)
def test_v4_like(page_class):
    on = expectation("v4-like", page_class, {KNOB: "1", RECOVERY: "1"})
    assert on.panic is (page_class in KERNEL_RESERVED)
    if page_class in ("slab", "pgtable"):
        assert (on.action_label, on.action_result, on.signature) == ("get hwpoison page", "Ignored", None)
    if page_class in KERNEL_RESERVED:
        assert (on.action_label, on.signature) == ("reserved kernel page", "new")


@pytest.mark.parametrize("page_class", PAGE_CLASSES)
def test_legacy_survives_unless_recovery_is_off(page_class):
    quiet = expectation("legacy", page_class, {RECOVERY: "1"})
    assert not quiet.panic and quiet.signature is None
    loud = expectation("legacy", page_class, {RECOVERY: "0"})
    assert (loud.panic, loud.signature, loud.action_label) == (True, "legacy", None)


def test_recovery_off_overrides_the_new_knob_everywhere():
    for name in SEMANTICS:
        sysctls = {RECOVERY: "0"} | ({KNOB: "1"} if name != "legacy" else {})
        assert expectation(name, "free-buddy", sysctls).signature == "legacy"


def test_unset_knob_means_default_zero_and_reason_says_so():
    result = expectation(semantics_named("v10-like"), "slab", {})
    assert not result.panic and "unset (default 0)" in result.reason


@pytest.mark.parametrize("semantics,page_class,sysctls", [
    ("legacy", "slab", {KNOB: "1"}),           # the sysctl does not exist there
    ("v10-like", "slab", {KNOB: "2"}),         # proc_dointvec_minmax 0..1
    ("v10-like", "pfn", {KNOB: "1"}),          # an explicit pfn has no class
    ("v11-like", "slab", {KNOB: "1"}),
])
def test_expectation_refuses_what_it_cannot_know(semantics, page_class, sysctls):
    with pytest.raises(ConfigError):
        expectation(semantics, page_class, sysctls)


@pytest.mark.parametrize("probe,name", [
    ("7.4.0-rc1\nhas-knob\nhas-recovery\nsymbol is_kernel_owned_page\n", "v10-like"),
    ("7.1.0-mm\nhas-knob\nhas-recovery\nsymbol is_unrecoverable_memory_failure\n", "v4-like"),
    ("6.1.0-56-amd64\nhas-recovery\n", "legacy"),
])
def test_decide_semantics(probe, name):
    decided = decide_semantics(probe)
    assert decided.name == name and decided.evidence[0].startswith("kernel release")


@pytest.mark.parametrize("probe,fragment", [
    ("7.3.4+deb13-cloud-amd64\nhas-knob\nhas-recovery\n", "semantics: v10-like | v4-like | legacy"),
    ("7.3.5+deb13-amd64\nhas-knob\n", "slab probe did not run"),      # no guess from a version
    ("6.18.0\n", "CONFIG_MEMORY_FAILURE"),
    ("7.4.0\nhas-knob\nsymbol is_kernel_owned_page\nsymbol is_unrecoverable_memory_failure\n", "contradicting"),
])
def test_undecidable_kernels_raise(probe, fragment):
    with pytest.raises(SemanticsUnknown, match=fragment) as err:
        decide_semantics(probe)
    assert isinstance(err.value, FatalInfraError)


def test_probe_without_measuring_reads_files_and_symbols_only():
    shell = FakeShell([(r"uname -r", "7.4.0\nhas-recovery\nhas-knob\n"),
                       (r"kallsyms", "symbol is_kernel_owned_page\n")])
    assert probe_semantics(shell).name == "v10-like"
    assert len(shell.commands) == 2 and "/proc/kallsyms" in shell.commands[1]
    assert all(">" not in c.replace("2>", "") for c in shell.commands)   # reads only


def test_measuring_replaces_the_symbol_scan():
    shell = FakeShell([(r"uname -r", "7.3.5+deb13-cloud-amd64\nhas-recovery\nhas-knob\n")])
    found = probe_semantics(shell, measure=lambda: ("v10-like", "measured: slab"))
    assert (found.name, found.evidence[-1], len(shell.commands)) == ("v10-like", "measured: slab", 1)


def test_a_kernel_without_the_sysctl_is_legacy_before_any_symbol_or_probe():
    shell = FakeShell([(r"uname -r", "7.2.12+deb13-cloud-amd64\nhas-recovery\n")])
    assert probe_semantics(shell, measure=lambda: pytest.fail("probed")).name == "legacy"
    assert len(shell.commands) == 1


@pytest.mark.skipif(os.path.exists("/proc/sys/vm/memory_failure_recovery"),
                    reason="this machine's kernel has CONFIG_MEMORY_FAILURE")
def test_probe_on_this_machine_without_memory_failure():
    with pytest.raises(SemanticsUnknown, match="CONFIG_MEMORY_FAILURE"):
        probe_semantics(LocalShell())


def test_inventory_name_decides_what_files_cannot():
    found = decide_semantics("7.3.5+deb13-cloud-amd64\nhas-knob\nhas-recovery\n", named="v4-like")
    assert found.name == "v4-like" and "named in the inventory" in found.evidence[-1]


@pytest.mark.parametrize("probe,named", [
    ("6.1.0-56-amd64\nhas-recovery\n", "v10-like"),                      # no sysctl: legacy, not v10
    ("7.4.0\nhas-knob\nsymbol is_kernel_owned_page\n", "v4-like"),
])
def test_inventory_name_contradicted_by_the_kernel_is_an_error(probe, named):
    with pytest.raises(SemanticsUnknown, match=f"inventory names {named}"):
        decide_semantics(probe, named=named)


def test_measure_runs_only_when_nothing_else_decides():
    calls = []

    def measure():
        calls.append(1)
        return "v10-like", "measured: ..."
    assert decide_semantics("7.3.5\nhas-knob\nhas-recovery\n", measure=measure).evidence[-1] == "measured: ..."
    assert decide_semantics("6.1.0\nhas-recovery\n", measure=measure).name == "legacy"
    assert decide_semantics("7.3.5\nhas-knob\n", named="v4-like", measure=measure).name == "v4-like"
    assert calls == [1]


def test_semantics_names_agree_with_the_matrix():
    assert tuple(matrix()["semantics"]) == SEMANTICS
    assert set(matrix()["probe"]["labels"].values()) <= set(SEMANTICS) - {"legacy"}
