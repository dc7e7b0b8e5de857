"""End to end on the virtual lab (x86_64, TCG): the orchestrator drives QEMU machines through
their own BMCs (IPMI power, SOL console) and SSH, exactly as it drives a rack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.faces.cli.main import main
from orchestrator.results.store import load_run
from vlabs import lacks_injector, nightly_cases

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64]
REPO = Path(__file__).resolve().parent.parent


def run_playbook(inventory: Path, playbook: str, results: Path, *extra: str):
    code = main(["run", "-i", str(inventory), str(REPO / playbook), "--results", str(results), *extra])
    runs = sorted(p for p in results.iterdir() if p.is_dir())
    assert runs, "the run wrote no results folder"
    return code, load_run(runs[-1]), runs[-1]


def by_case(run) -> dict:
    return {c.case: c for c in run.cases}


def test_smoke_panics_and_survives_with_evidence(vlab_x86, tmp_path):
    code, run, run_dir = run_playbook(vlab_x86, "playbooks/smoke.yaml", tmp_path)
    cases = by_case(run)
    panic, survive = cases["rodata-panic"], cases["rodata-survive"]
    assert panic.verdict == "pass", panic.reasons
    assert survive.verdict == "pass", survive.reasons
    assert code == 0
    # panic verified from the console and from the dump, naming the injected pfn
    needle = f"Memory failure: {panic.pfn:#x}: unrecoverable page"
    assert any(e.source == "console" and needle in e.text for e in panic.evidence)
    assert any(e.source == "dump-dmesg" and needle in e.text for e in panic.evidence)
    assert panic.boot_id_after and panic.boot_id_after != panic.boot_id_before
    assert panic.dump and int(panic.dump["vmcoreinfo"]["CRASHTIME"]) > 0
    assert panic.dump["vmcoreinfo"]["OSRELEASE"].startswith("7.")
    # the survive case saw "Ignored" and kept its boot
    assert survive.boot_id_after == survive.boot_id_before
    assert any("reserved kernel page: Ignored" in e.text for e in survive.evidence)
    # artifacts on disk, reports rendered
    for name in ("console.log", "commands.log", "dmesg", "metadata.json"):
        assert (run_dir / panic.artifacts[name]).is_file(), name
    assert needle in (run_dir / panic.artifacts["dmesg"]).read_text()
    junit = (run_dir / "junit.xml").read_text()
    assert 'tests="2"' in junit and "<failure" not in junit and "<error" not in junit
    assert json.loads((run_dir / "run.json").read_text())["schema_version"] == 1


def test_wrong_expectation_ends_fail_with_the_evidence(vlab_x86, tmp_path):
    code, run, _ = run_playbook(vlab_x86, "tests/playbooks/wrong-expectation.yaml", tmp_path)
    case = run.cases[0]
    assert code == 1 and case.verdict == "fail"
    assert any("'reserved kernel page'" in r and "'free buddy page'" in r for r in case.reasons), case.reasons


def test_wedged_host_is_recovered_through_the_bmc(vlab_x86, tmp_path):
    code, run, _ = run_playbook(vlab_x86, "tests/playbooks/wedge.yaml", tmp_path)
    case = run.cases[0]
    assert case.verdict == "pass", case.reasons
    assert "wedged" in [t.state for t in case.timings]
    assert any("power cycle" in r for r in case.recovery), case.recovery
    assert case.boot_id_after != case.boot_id_before
    assert any(e.source == "console" and "unrecoverable page" in e.text for e in case.evidence)
    assert code == 0


def test_crash_kernel_unloaded_by_a_case_is_loaded_again_for_the_next(vlab_x86, tmp_path):
    code, run, _ = run_playbook(vlab_x86, "tests/playbooks/kdump-reload.yaml", tmp_path)
    cases = by_case(run)
    assert "restore: reloaded the crash kernel" in cases["survive-without-kdump"].recovery
    assert cases["panic-needs-kdump-again"].verdict == "pass", cases["panic-needs-kdump-again"].reasons
    assert cases["panic-needs-kdump-again"].dump is not None
    assert code == 0


@pytest.mark.slow
def test_nightly_gives_the_correct_verdict_for_every_case(vlab_x86, tmp_path):
    code, run, _ = run_playbook(vlab_x86, "playbooks/nightly.yaml", tmp_path,
                                "--cases", nightly_cases(without_injector="qemu_mce"))
    wrong = {c.case: (c.verdict, c.reasons) for c in run.cases if c.verdict != "pass" and not lacks_injector(c)}
    assert not wrong
    assert code == 0
    panicked = {c.case for c in run.cases if c.expect["outcome"] == "panic"}
    assert {"rodata-on-hwpoison", "slab-on-hardoff", "pgtable-on-hwpoison", "legacy-recovery-off"} <= panicked
    assert {"buddy-on-hwpoison", "anon-on-hardoff", "rodata-off-hwpoison"}.isdisjoint(panicked)
