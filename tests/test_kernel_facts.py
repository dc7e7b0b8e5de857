"""Host facts: parsed from canned output and probed on this machine (read-only)."""

from __future__ import annotations

import os
import platform

import pytest

from orchestrator.errors import FatalInfraError
from orchestrator.kernel.facts import parse_facts, probe_facts
from test_kernel_shells import LocalShell, busybox_shell


def test_parse_facts():
    facts = parse_facts(["aarch64", "7.3.4+deb13-cloud-arm64", "4096", "1"])
    assert (facts.arch, facts.page_size, facts.kdump_loaded) == ("aarch64", 4096, True)
    with pytest.raises(FatalInfraError):
        parse_facts(["riscv64", "6.1", "4096", "0"])
    with pytest.raises(FatalInfraError):
        parse_facts(["x86_64", "6.1", "0"])


@pytest.mark.parametrize("which", ["dash", "busybox"])
def test_probe_this_machine(which, tmp_path):
    shell = LocalShell() if which == "dash" else busybox_shell(tmp_path)
    facts = probe_facts(shell)
    assert facts.release == platform.release() and facts.page_size == os.sysconf("SC_PAGE_SIZE")
    assert facts.arch == {"x86_64": "x86_64", "aarch64": "aarch64"}[platform.machine()]
    loaded = os.path.exists("/sys/kernel/kexec_crash_loaded") and \
        open("/sys/kernel/kexec_crash_loaded").read().strip() == "1"
    assert facts.kdump_loaded is loaded
