"""The arm journal on the host: recorded once before arming, restored from by anyone, never
overwritten by armed values. The journal's file operations run for real (this machine's sh);
the kernel's sysctls and crash kernel are a dict standing in for /proc."""

from __future__ import annotations

import pytest

from orchestrator.cycle import arm_journal
from orchestrator.cycle.arm_journal import ArmRecord, LeftArmed
from orchestrator.errors import FatalInfraError
from orchestrator.kernel import kdump, sysctl
from test_kernel_shells import LocalShell

PANIC = "vm.panic_on_unrecoverable_memory_failure"


class FakeProc:
    """/proc/sys and the crash kernel's flag as files in a folder of the test's: the journal's
    commands (reads, writes, the host-side check before the journal is dropped) run for real."""

    def __init__(self, root):
        self.root, self.reload_works = root, True
        self.kexec = root / "kexec_crash_loaded"
        root.mkdir(parents=True)
        self.kdump = True
        for name, value in ((PANIC, "0"), ("kernel.panic", "0"), ("kernel.printk", "4\t4\t1\t7")):
            self[name] = value

    def _path(self, name):
        return self.root / "sys" / name.replace(".", "/")

    def __getitem__(self, name):
        return " ".join(self._path(name).read_text().split())

    def __setitem__(self, name, value):
        self._path(name).parent.mkdir(parents=True, exist_ok=True)
        self._path(name).write_text(f"{value}\n")

    def refuse(self, name):
        """Writes to it fail, as for a sysctl the kernel will not take (a folder cannot be written)."""
        self._path(name).unlink()
        self._path(name).mkdir()

    @property
    def kdump(self):
        return self.kexec.read_text().strip() == "1"

    @kdump.setter
    def kdump(self, loaded):
        self.kexec.write_text("1\n" if loaded else "0\n")


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    proc = FakeProc(tmp_path / "proc")
    monkeypatch.setattr(sysctl, "PROC_SYS", str(proc.root / "sys"))
    for module in (arm_journal, kdump):
        monkeypatch.setattr(module, "KDUMP_LOADED_CMD", f"cat {proc.kexec}")
    real_run = LocalShell.run

    def run_reload(shell, command, **kw):
        if command == arm_journal.RELOAD_KDUMP:
            proc.kdump = proc.reload_works
            command = "true"
        return real_run(shell, command, **kw)

    monkeypatch.setattr(LocalShell, "run", run_reload)
    return proc


def test_record_then_restore_puts_back_the_originals_and_reloads_kdump(kernel, tmp_path):
    shell, state_dir = LocalShell(), str(tmp_path / "state")
    record = arm_journal.record_originals(shell, state_dir, [PANIC, "kernel.panic", "kernel.printk"],
                                          run_id="r1", case="c1")
    assert arm_journal.read_record(shell, state_dir) == record
    kernel[PANIC] = "1"                     # armed
    kernel.kdump = False                    # a wedge case unloaded the crash kernel
    done = arm_journal.restore(shell, state_dir, record, timeout=5)
    assert kernel[PANIC] == "0" and kernel.kdump is True and kernel["kernel.printk"] == "4 4 1 7"
    assert done == [f"restored {PANIC}=0", "reloaded the crash kernel"]
    assert arm_journal.read_record(shell, state_dir) is None


def test_the_journal_is_dropped_on_the_host_only_when_it_holds_the_recorded_values(kernel, tmp_path):
    shell, state_dir = LocalShell(), str(tmp_path / "state")
    record = arm_journal.record_originals(shell, state_dir, [PANIC, "kernel.printk"], run_id="r1", case="c1",
                                          boot_id="b1")
    kernel[PANIC] = "1"
    assert not shell.run(arm_journal.disarm_command(state_dir, record, "b1"), timeout=5, check=False).ok
    assert arm_journal.read_record(shell, state_dir) == record
    kernel[PANIC], kernel.kdump = "0", False
    assert not shell.run(arm_journal.disarm_command(state_dir, record, "b1"), timeout=5, check=False).ok
    assert arm_journal.read_record(shell, state_dir) == record
    # a later boot loaded its own crash kernel (or will): not the journal's to check
    assert shell.run(arm_journal.disarm_command(state_dir, record, "a-later-boot"), timeout=5, check=False).ok
    assert arm_journal.read_record(shell, state_dir) is None


def test_a_second_record_never_overwrites_the_originals(kernel, tmp_path):
    shell, state_dir = LocalShell(), str(tmp_path / "state")
    arm_journal.record_originals(shell, state_dir, [PANIC], run_id="killed-run", case="c1")
    kernel[PANIC] = "1"                     # the killed run had armed the host
    with pytest.raises(FatalInfraError, match="already on the host"):
        arm_journal.record_originals(shell, state_dir, [PANIC], run_id="next-run", case="c1")
    pending = arm_journal.read_record(shell, state_dir)
    assert pending.run_id == "killed-run" and dict(pending.sysctls) == {PANIC: "0"}


def test_a_restore_that_cannot_happen_leaves_the_journal_and_says_left_armed(kernel, tmp_path):
    shell, state_dir = LocalShell(), str(tmp_path / "state")
    record = arm_journal.record_originals(shell, state_dir, [PANIC], run_id="r1", case="c1")
    kernel.refuse(PANIC)
    with pytest.raises(LeftArmed, match="run r1, case c1"):
        arm_journal.restore(shell, state_dir, record, timeout=5)
    assert arm_journal.read_record(shell, state_dir) == record      # kept for the next try


def test_a_crash_kernel_that_will_not_load_again_is_left_armed(kernel, tmp_path):
    shell, state_dir = LocalShell(), str(tmp_path / "state")
    record = arm_journal.record_originals(shell, state_dir, [PANIC], run_id="r1", case="c1")
    kernel.kdump, kernel.reload_works = False, False
    with pytest.raises(LeftArmed, match="crash kernel"):
        arm_journal.restore(shell, state_dir, record, timeout=5)


def test_values_with_tabs_and_spaces_survive_the_record():
    record = ArmRecord(sysctls=(("kernel.printk", "4 4 1 7"),), kdump_loaded=False, run_id="r", case="c")
    assert ArmRecord.parse(record.lines()) == record
