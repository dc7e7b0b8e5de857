"""The arm journal on the host: recorded once before arming, restored from by anyone, never
overwritten by armed values. The journal's file operations run for real (this machine's sh);
the kernel's sysctls and crash kernel are a dict standing in for /proc."""

from __future__ import annotations

import pytest

from orchestrator.cycle import arm_journal
from orchestrator.cycle.arm_journal import ArmRecord, LeftArmed
from orchestrator.errors import FatalInfraError
from orchestrator.kernel.sysctl import SysctlRefused
from test_kernel_shells import LocalShell

PANIC = "vm.panic_on_unrecoverable_memory_failure"


@pytest.fixture
def kernel(monkeypatch):
    state = {"sysctls": {PANIC: "0", "kernel.panic": "0"}, "kdump": True, "refuse": set(), "reload_works": True}

    def write(shell, values):
        refused = {k for k in values if k in state["refuse"]}
        if refused:
            raise SysctlRefused(f"sysctl write refused: {', '.join(sorted(refused))}")
        state["sysctls"].update(values)

    real_run = LocalShell.run

    def run_reload(shell, command, **kw):
        if command == arm_journal.RELOAD_KDUMP:
            state["kdump"] = state["reload_works"]
            return None
        return real_run(shell, command, **kw)

    monkeypatch.setattr(arm_journal, "read_sysctls", lambda shell, names: {n: state["sysctls"].get(n) for n in names})
    monkeypatch.setattr(arm_journal, "write_sysctls", write)
    monkeypatch.setattr(arm_journal, "kdump_loaded", lambda shell: state["kdump"])
    monkeypatch.setattr(LocalShell, "run", run_reload)
    return state


def test_record_then_restore_puts_back_the_originals_and_reloads_kdump(kernel, tmp_path):
    shell, state_dir = LocalShell(), str(tmp_path / "state")
    record = arm_journal.record_originals(shell, state_dir, [PANIC, "kernel.panic"], run_id="r1", case="c1")
    assert arm_journal.read_record(shell, state_dir) == record
    kernel["sysctls"][PANIC] = "1"          # armed
    kernel["kdump"] = False                 # a wedge case unloaded the crash kernel
    done = arm_journal.restore(shell, state_dir, record, timeout=5)
    assert kernel["sysctls"][PANIC] == "0" and kernel["kdump"] is True
    assert done == [f"restored {PANIC}=0", "reloaded the crash kernel"]
    assert arm_journal.read_record(shell, state_dir) is None


def test_a_second_record_never_overwrites_the_originals(kernel, tmp_path):
    shell, state_dir = LocalShell(), str(tmp_path / "state")
    arm_journal.record_originals(shell, state_dir, [PANIC], run_id="killed-run", case="c1")
    kernel["sysctls"][PANIC] = "1"          # the killed run had armed the host
    with pytest.raises(FatalInfraError, match="already on the host"):
        arm_journal.record_originals(shell, state_dir, [PANIC], run_id="next-run", case="c1")
    pending = arm_journal.read_record(shell, state_dir)
    assert pending.run_id == "killed-run" and dict(pending.sysctls) == {PANIC: "0"}


def test_a_restore_that_cannot_happen_leaves_the_journal_and_says_left_armed(kernel, tmp_path):
    shell, state_dir = LocalShell(), str(tmp_path / "state")
    record = arm_journal.record_originals(shell, state_dir, [PANIC], run_id="r1", case="c1")
    kernel["sysctls"][PANIC] = "1"
    kernel["refuse"].add(PANIC)
    with pytest.raises(LeftArmed, match="run r1, case c1"):
        arm_journal.restore(shell, state_dir, record, timeout=5)
    assert arm_journal.read_record(shell, state_dir) == record      # kept for the next try


def test_a_crash_kernel_that_will_not_load_again_is_left_armed(kernel, tmp_path):
    shell, state_dir = LocalShell(), str(tmp_path / "state")
    record = arm_journal.record_originals(shell, state_dir, [PANIC], run_id="r1", case="c1")
    kernel["kdump"], kernel["reload_works"] = False, False
    with pytest.raises(LeftArmed, match="crash kernel"):
        arm_journal.restore(shell, state_dir, record, timeout=5)


def test_values_with_tabs_and_spaces_survive_the_record():
    record = ArmRecord(sysctls=(("kernel.printk", "4 4 1 7"),), kdump_loaded=False, run_id="r", case="c")
    assert ArmRecord.parse(record.lines()) == record
