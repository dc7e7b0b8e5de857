"""Machine checks end to end on the lab: the orchestrator asks the machine's BMC (IPMI OEM
request) to raise an SRAO memory-scrub #MC at the target page; the guest kernel takes it as
real hardware (uc_decode_notifier -> memory_failure() in the mce workqueue). Only the lab can
prove that this path reaches the new panic, and that its expectations (the semantics matrix's
machine-check rows) hold. The full matrix is playbooks/nightly.yaml's *-mce cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.faces.cli.main import main
from orchestrator.results.store import load_run
from vlabs import only_run

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64]
PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "mce.yaml"


def test_machine_checks_panic_or_are_ignored_as_the_matrix_says(vlab_x86, tmp_path):
    code = main(["run", "-i", str(vlab_x86), str(PLAYBOOK), "--results", str(tmp_path)])
    run_dir = only_run(tmp_path)
    cases = {c.case: c for c in load_run(run_dir).cases}
    assert {name: (c.verdict, c.reasons) for name, c in cases.items()} == {
        name: ("pass", ()) for name in ("rodata-on-mce", "rodata-off-mce", "slab-on-mce")}
    assert code == 0

    for name in ("rodata-on-mce", "slab-on-mce"):        # sysctl 1: the new panic, with a kdump
        panic = cases[name]
        needle = f"Kernel panic - not syncing: Memory failure: {panic.pfn:#x}: unrecoverable page"
        assert any(e.source == "console" and needle in e.text for e in panic.evidence), panic.evidence
        assert any(e.source == "dump-dmesg" and needle in e.text for e in panic.evidence), panic.evidence
        assert panic.boot_id_after != panic.boot_id_before and panic.dump["vmcoreinfo"]["CRASHTIME"]
        # ... raised by the machine check, not by a write on the host: the mce workqueue panics
        console = (run_dir / panic.artifacts["console.log"]).read_text(errors="replace")
        before_panic = console.split(needle)[0]
        assert "mce: [Hardware Error]: Machine check events logged" in before_panic
        assert "Injecting memory failure" not in before_panic
        for line in ("Workqueue: events mce_gen_pool_process", "uc_decode_notifier", "Tainted: [M]=MACHINE_CHECK"):
            assert line in console, line

    survive = cases["rodata-off-mce"]                     # sysctl 0: "Ignored", the host runs on
    assert survive.boot_id_after == survive.boot_id_before
    assert any(f"{survive.pfn:#x}: recovery action for reserved kernel page: Ignored" in e.text
               for e in survive.evidence), survive.evidence
    console = (run_dir / survive.artifacts["console.log"]).read_text(errors="replace")
    assert "mce: [Hardware Error]: CPU 0: Machine Check Exception: 5 Bank 9: bd000000000000c0" in console
    assert f"ADDR {survive.pfn << 12:x} MISC 86" in console
