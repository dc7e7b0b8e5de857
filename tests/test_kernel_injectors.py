"""Injector commands and availability probes (run against a stand-in debugfs, never the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.config import playbook
from orchestrator.kernel.injectors import INJECTORS, injector
from orchestrator.kernel.pages import Target
from test_kernel_shells import FakeShell, LocalShell

RODATA = Target("kernel-rodata", 0x38810, 0x38810000, 1 << 32, 0, "test", None)


def run_against_fake_tree(command: str, tmp_path) -> dict[str, str]:
    """Run an injector command in dash with /sys/... redirected into tmp_path/sys; return the
    files it wrote (relative to /sys) and their contents."""
    root = tmp_path / "sys"
    command = command.replace("/sys/", f"{root}/")
    for write in command.split("&&"):
        Path(write.split("> ")[1].split()[0]).parent.mkdir(parents=True, exist_ok=True)
    LocalShell().run(command, timeout=10)
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_names_and_unknown_injector():
    assert INJECTORS[:6] == ("hwpoison_inject", "hard_offline_page", "einj", "einj_fatal", "mce_inject", "qemu_mce")
    assert INJECTORS[6:] == ("ghes", "ghes_fatal", "ghes_corrected")
    assert all(injector(n).name == n for n in INJECTORS)
    with pytest.raises(ConfigError, match="unknown injector"):
        injector("madvise")


def test_playbooks_accept_exactly_the_implemented_injectors():
    # config/ may not import kernel/, so the playbook schema keeps its own list of names.
    assert INJECTORS == playbook.INJECTORS
    assert {n: playbook.INJECTOR_FEATURES.get(n, n) for n in INJECTORS} == {n: injector(n).feature for n in INJECTORS}


def test_hwpoison_writes_the_pfn(tmp_path):
    cmd = injector("hwpoison_inject").command(RODATA)
    assert cmd == "echo 0x38810 > /sys/kernel/debug/hwpoison/corrupt-pfn"
    assert run_against_fake_tree(cmd, tmp_path) == {"kernel/debug/hwpoison/corrupt-pfn": "0x38810\n"}


def test_hard_offline_writes_the_physical_address(tmp_path):
    cmd = injector("hard_offline_page").command(RODATA)
    assert run_against_fake_tree(cmd, tmp_path) == {
        "devices/system/memory/hard_offline_page": "0x38810000\n"}


def test_mce_inject_record_and_bank_last(tmp_path):
    cmd = injector("mce_inject").command(RODATA)
    writes = [w.split(">")[1].strip().rsplit("/", 1)[1] for w in cmd.split("&&")]
    assert writes[0] == "flags" and writes[-1] == "bank"       # the bank write fires it
    wrote = {k.rsplit("/", 1)[1]: v.strip() for k, v in run_against_fake_tree(cmd, tmp_path).items()}
    assert wrote == {"flags": "hw", "cpu": "0", "status": "0xbd000000000000c0",
                     "addr": "0x38810000", "misc": "0x8c", "bank": "1"}


def test_hwpoison_prepare_disables_the_filter():
    shell = FakeShell([(r"modprobe hwpoison_inject", "")])
    injector("hwpoison_inject").prepare(shell)
    assert "echo 0 > /sys/kernel/debug/hwpoison/corrupt-filter-enable" in shell.commands[0]
    assert "mount -t debugfs" in shell.commands[0]


@pytest.mark.parametrize("probe,expected", [
    ("present\nlockdown=[none] integrity confidentiality\n", None),
    ("lockdown=\nmodule\n", None),                                   # loadable: prepare() loads it
    ("lockdown=\n", "hwpoison_inject: /sys/kernel/debug/hwpoison/corrupt-pfn missing and no "
                    "hwpoison_inject module"),
    ("present\nlockdown=none [integrity] confidentiality\n", "Secure Boot lockdown"),
])
def test_hwpoison_availability(probe, expected):
    reason = injector("hwpoison_inject").unavailable_reason(FakeShell([(r"", probe)]), arch="x86_64")
    assert reason == expected or (expected and expected in reason)


def test_hard_offline_needs_its_sysfs_file():
    shell = FakeShell([(r"", "lockdown=\n")])
    assert "hard_offline_page missing" in injector("hard_offline_page").unavailable_reason(shell, arch="aarch64")


@pytest.mark.parametrize("arch,cpuinfo,fragment", [
    ("aarch64", "", "x86 only"),
    ("x86_64", "vendor_id\t: GenuineIntel\n", "only AMD"),
    ("x86_64", "vendor_id\t: AuthenticAMD\nhypervisor\n", "hypervisor"),
])
def test_mce_inject_refusals(arch, cpuinfo, fragment):
    shell = FakeShell([(r"cpuinfo", cpuinfo)])
    assert fragment in injector("mce_inject").unavailable_reason(shell, arch=arch)


def test_mce_inject_on_amd_metal_with_module():
    shell = FakeShell([(r"cpuinfo", "vendor_id\t: AuthenticAMD\n"), (r"", "lockdown=\nmodule\n")])
    assert injector("mce_inject").unavailable_reason(shell, arch="x86_64") is None
