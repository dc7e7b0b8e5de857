"""sysctl paths, reading (incl. this machine's real /proc/sys, read-only) and refused writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.protocols.shell import CommandResult
from orchestrator.kernel.sysctl import (SysctlRefused, parse_sysctl_lines, read_sysctls,
                                        sysctl_path, write_sysctls)
from test_kernel_shells import FakeShell, LocalShell

KNOB = "vm.panic_on_unrecoverable_memory_failure"


def test_sysctl_path():
    assert sysctl_path(KNOB) == "/proc/sys/vm/panic_on_unrecoverable_memory_failure"
    assert sysctl_path("net.ipv4.conf.all.rp_filter") == "/proc/sys/net/ipv4/conf/all/rp_filter"
    for bad in ("vm", "vm.x; reboot", "../etc/passwd", "vm.$(id)"):
        with pytest.raises(ConfigError):
            sysctl_path(bad)


def test_parse_keeps_tabs_inside_values_and_absent_names():
    text = f"kernel.printk\t4\t4\t1\t7\n{KNOB} absent\nvm.memory_failure_recovery\t1\n"
    assert parse_sysctl_lines(text, ["kernel.printk", KNOB, "vm.memory_failure_recovery"]) == {
        "kernel.printk": "4 4 1 7", KNOB: None, "vm.memory_failure_recovery": "1"}
    with pytest.raises(FatalInfraError, match="no line for vm.x"):
        parse_sysctl_lines("", ["vm.x"])


def test_read_real_proc_sys_of_this_machine():
    assert Path("/proc/sys/vm/panic_on_oom").exists()
    values = read_sysctls(LocalShell(), ["vm.panic_on_oom", "vm.no_such_sysctl_here", "kernel.printk"])
    assert values["vm.panic_on_oom"] == Path("/proc/sys/vm/panic_on_oom").read_text().strip()
    assert values["vm.no_such_sysctl_here"] is None
    assert values["kernel.printk"] == " ".join(Path("/proc/sys/kernel/printk").read_text().split())


class SysctlHost(FakeShell):
    """Keeps sysctl values; refuses values outside 0..1 like proc_dointvec_minmax does."""

    def __init__(self, values):
        super().__init__([])
        self.values = values

    def run(self, command, *, timeout, check=True):
        self.commands.append(command)
        out, err = [], []
        for value, path in re.findall(r"printf '%s\\n' ('[^']*'|\S+) > /proc/sys/(\S+)", command):
            name, value = path.replace("/", "."), value.strip("'")
            if name in self.values and value in ("0", "1"):
                self.values[name] = value
            else:
                err.append("sh: write error: Invalid argument")
        for path in re.findall(r"if \[ -e /proc/sys/(\S+) \]", command):
            name = path.replace("/", ".")
            out.append(f"{name}\t{self.values[name]}" if name in self.values else f"{name} absent")
        return CommandResult(command, 1 if err else 0, "\n".join(out) + "\n", "\n".join(err), 0.0)


def test_write_then_verify():
    host = SysctlHost({KNOB: "0", "vm.memory_failure_recovery": "1"})
    write_sysctls(host, {KNOB: "1"})
    assert host.values[KNOB] == "1"
    assert "printf '%s\\n' 1 > /proc/sys/vm/panic_on_unrecoverable_memory_failure" in host.commands[0]


def test_out_of_range_and_absent_are_refused():
    host = SysctlHost({KNOB: "0"})
    with pytest.raises(SysctlRefused) as err:
        write_sysctls(host, {KNOB: "2", "vm.memory_failure_recovery": "0"})
    assert "vm.panic_on_unrecoverable_memory_failure='2' (now '0')" in str(err.value)
    assert "vm.memory_failure_recovery='0' (now absent)" in str(err.value)
    assert isinstance(err.value, FatalInfraError)


def test_values_are_quoted():
    host = SysctlHost({})
    with pytest.raises(SysctlRefused):
        write_sysctls(host, {"kernel.core_pattern": "x; reboot"})
    assert "'x; reboot'" in host.commands[0]
