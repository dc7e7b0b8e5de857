"""The slab semantics probe: its host-side script on a stand-in /proc, /sys and dmesg (the
real thing runs in tests/test_e2e_semantics.py), its reading, and the per-boot resolver."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.config.model import Host, SshConfig
from orchestrator.config.playbook import Case, Expectation, Limits
from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.cycle.handles import PerBoot
from orchestrator.errors import FatalInfraError
from orchestrator.kernel import semantics, semantics_probe
from orchestrator.kernel.injectors import DEBUGFS
from orchestrator.kernel.semantics_probe import ProbeRefused, probe_command, read_answer
from orchestrator.kernel.target import Target
from test_kernel_shells import FakeShell, LocalShell

KNOB, RECOVERY = "vm.panic_on_unrecoverable_memory_failure", "vm.memory_failure_recovery"
LABELS = semantics.matrix()["probe"]["labels"]
SLAB = Target("slab", 0x1033, 0x1033000, 0x80, 0, "test", None)


def fake_host(tmp_path, knob="1", recovery="0", flt="1", flags=0x80, label="reserved kernel page"):
    """A shell whose /proc/sys/vm, debugfs, /proc/kpageflags, /proc/mounts and dmesg are files
    under tmp_path; dmesg also reports the sysctls as they were when it ran (after the write)."""
    vm, dbg, bin_ = tmp_path / "vm", tmp_path / "debug", tmp_path / "bin"
    for d in (vm, dbg / "hwpoison", bin_):
        d.mkdir(parents=True)
    (vm / "panic_on_unrecoverable_memory_failure").write_text(knob + "\n")
    (vm / "memory_failure_recovery").write_text(recovery + "\n")
    (dbg / "hwpoison/corrupt-filter-enable").write_text(flt + "\n")
    (dbg / "hwpoison/corrupt-pfn").write_text("")
    (tmp_path / "kpageflags").write_bytes(bytes(8 * SLAB.pfn) + flags.to_bytes(8, "little"))
    (tmp_path / "mounts").write_text(f"debugfs {dbg} debugfs rw 0 0\n")
    (bin_ / "dmesg").write_text(
        "#!/bin/sh\necho '[ 5.1] Memory failure: 0x1033: unhandlable page.'\n"
        f"echo '[ 5.1] Memory failure: 0x1033: recovery action for {label}: Ignored'\n"
        f"echo \"during $(cat {vm}/panic_on_unrecoverable_memory_failure) $(cat {vm}/memory_failure_recovery) "
        f"$(cat {dbg}/hwpoison/corrupt-filter-enable) pfn=$(cat {dbg}/hwpoison/corrupt-pfn)\" >> {tmp_path}/log\n")
    (bin_ / "dmesg").chmod(0o755)

    def rewrite(command: str) -> str:
        for real, fake in (("/proc/sys/vm", str(vm)), (DEBUGFS, str(dbg)), ("/proc/kpageflags", str(tmp_path / "kpageflags")),
                           ("/proc/mounts", str(tmp_path / "mounts"))):
            command = command.replace(real, fake)
        return command
    shell = LocalShell(path=f"{bin_}:/usr/bin:/bin")
    run = shell.run
    shell.run = lambda command, **kw: run(rewrite(command), **kw)
    return shell, vm, dbg


def test_probe_injects_with_the_sysctl_at_0_and_restores_exactly(tmp_path):
    shell, vm, dbg = fake_host(tmp_path, knob="1", recovery="0", flt="1")
    out = shell.run(probe_command(SLAB, KNOB, RECOVERY), timeout=10, check=False)
    assert (tmp_path / "log").read_text() == "during 0 1 0 pfn=0x1033\n"    # nothing could panic
    assert (vm / "panic_on_unrecoverable_memory_failure").read_text() == "1\n"
    assert (vm / "memory_failure_recovery").read_text() == "0\n"
    assert (dbg / "hwpoison/corrupt-filter-enable").read_text() == "1\n"
    found = read_answer(out.stdout, out.exit_code, SLAB, LABELS)
    assert found.name == "v10-like" and "recovery action for reserved kernel page: Ignored" in found.evidence


def test_a_page_that_changed_is_not_injected_and_everything_is_put_back(tmp_path):
    shell, vm, _ = fake_host(tmp_path, knob="1", flags=0x400)              # now a free buddy page
    out = shell.run(probe_command(SLAB, KNOB, RECOVERY), timeout=10, check=False)
    assert not (tmp_path / "log").exists() and (vm / "panic_on_unrecoverable_memory_failure").read_text() == "1\n"
    assert read_answer(out.stdout, out.exit_code, SLAB, LABELS).name is None


def test_v4_label(tmp_path):
    shell, _, _ = fake_host(tmp_path, knob="0", recovery="1", label="get hwpoison page")
    out = shell.run(probe_command(SLAB, KNOB, RECOVERY), timeout=10, check=False)
    assert read_answer(out.stdout, out.exit_code, SLAB, LABELS).name == "v4-like"


def test_a_sysctl_that_cannot_be_set_refuses_before_injecting(tmp_path):
    shell, vm, _ = fake_host(tmp_path)
    (vm / "panic_on_unrecoverable_memory_failure").unlink()
    out = shell.run(probe_command(SLAB, KNOB, RECOVERY), timeout=10, check=False)
    assert not (tmp_path / "log").exists()
    with pytest.raises(ProbeRefused):
        read_answer(out.stdout, out.exit_code, SLAB, LABELS)


def test_sysctls_not_put_back_is_a_loud_error():
    with pytest.raises(FatalInfraError, match="not put back"):
        read_answer("saved 1 0 1\nrestored 0 1 0\n", 0, SLAB, LABELS)


HOST = Host(name="h", arch="x86_64", platform="p", ssh=SshConfig(address="a"), bmc=None,
            features=frozenset({"hwpoison_inject"}), destructive=True)


class Record:
    def __init__(self):
        self.evidence = []

    def add_evidence(self, source, text):
        self.evidence.append((source, text))


@pytest.fixture
def probes(monkeypatch):
    calls = []

    def measure(shell, probe, knob, recovery, *, arch, page_size):
        calls.append((arch, page_size))
        return "v10-like", "measured: slab 0x1033 'reserved kernel page'"
    monkeypatch.setattr(semantics_probe, "measure", measure)
    return calls


KERNEL = [(r"uname -m", "x86_64 7.3.9+deb13-cloud-amd64 4096 1\n"),
          (r"uname -r;", "7.3.9+deb13-cloud-amd64\nhas-recovery\nhas-knob\n")]


def kernel_shell():
    return FakeShell(KERNEL)


def symbol_shell():
    return FakeShell(KERNEL + [(r"kallsyms", "")])        # no symbol decides


def test_resolver_probes_once_per_boot_and_records_the_evidence(probes):
    resolver, per_boot, record = ExpectationResolver(HOST), PerBoot(), Record()
    case = _matrix_case()
    first = resolver(case, kernel_shell(), per_boot=per_boot, boot_id="b1", record=record)
    resolver(case, kernel_shell(), per_boot=per_boot, boot_id="b1")
    assert probes == [("x86_64", 4096)] and first.outcome == "panic"
    assert record.evidence[0][0] == "semantics" and "measured: slab" in record.evidence[0][1]
    resolver(case, kernel_shell(), per_boot=per_boot, boot_id="b2")       # rebooted: measured again
    assert len(probes) == 2


@pytest.mark.parametrize("host", [replace(HOST, destructive=False), replace(HOST, features=frozenset()), None])
def test_no_probe_where_the_inventory_does_not_allow_it(probes, host):
    with pytest.raises(semantics.SemanticsUnknown, match="semantics: v10-like . v4-like . legacy"):
        ExpectationResolver(host).probe(symbol_shell(), per_boot=PerBoot(), boot_id="b1")
    assert probes == []


def test_inventory_name_wins_without_probing(probes):
    host = replace(HOST, semantics="v4-like")
    shell = symbol_shell()
    found = ExpectationResolver(host).probe(shell, per_boot=PerBoot(), boot_id="b1")
    assert found.name == "v4-like" and probes == []


def test_a_failed_probe_is_not_repeated_within_the_boot(monkeypatch):
    calls = []

    def refused(*args, **kw):
        calls.append(1)
        raise ProbeRefused("debugfs is locked down")
    monkeypatch.setattr(semantics_probe, "measure", refused)
    resolver, per_boot = ExpectationResolver(HOST), PerBoot()
    for _ in range(2):
        with pytest.raises(semantics.SemanticsUnknown, match="locked down"):
            resolver.probe(kernel_shell(), per_boot=per_boot, boot_id="b1")
    assert calls == [1]


def _matrix_case() -> Case:
    return Case(name="slab-on", injector="hwpoison_inject", target="slab", pfn=None,
                sysctls=((KNOB, "1"),), expect=Expectation(outcome="matrix"), limits=Limits())
