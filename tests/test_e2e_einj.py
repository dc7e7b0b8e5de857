"""APEI EINJ end to end on the virtual lab: the guest's real einj.ko injects through the lab's
EINJ table, the lab BMC (the platform firmware) raises the machine check, the orchestrator
judges it as on a rack. One lab of two machines: vlab-x86-1 plain, vlab-x86-2 booted with
kernel lockdown (lockdown=integrity, as Secure Boot gives; vlab.kdump=0 since lockdown also
refuses kexec_load). Both playbooks run at once, one per machine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.results.store import load_run
from vlabs import cli, finished, on_host, only_run, private_lab

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64]
REPO = Path(__file__).resolve().parent.parent
PLAIN, LOCKED = "vlab-x86-1", "vlab-x86-2"


@pytest.fixture(scope="module")
def einj_lab(tmp_path_factory) -> Iterator[Path]:
    yield from private_lab(tmp_path_factory, hosts=2, kernel_args={LOCKED: ("lockdown=integrity", "vlab.kdump=0")})


@pytest.fixture(scope="module")
def runs(einj_lab, tmp_path_factory) -> dict:
    """host -> (exit status, run, run folder) of its playbook; both run at the same time."""
    plays = {PLAIN: "tests/playbooks/einj.yaml", LOCKED: "tests/playbooks/einj-lockdown.yaml"}
    results = {host: tmp_path_factory.mktemp(f"einj-{host}") for host in plays}
    procs = {host: cli("run", "-i", str(einj_lab), str(REPO / play), "--hosts", host, "--results", str(results[host]))
             for host, play in plays.items()}
    done = {}
    for host, proc in procs.items():
        code, _, err = finished(proc)
        folder = only_run(results[host])
        done[host] = (code, load_run(folder), folder, err)
    return done


def cases(runs, host: str) -> dict:
    return {c.case: c for c in runs[host][1].cases}


def bmc_log(einj_lab: Path, host: str) -> str:
    return (einj_lab.parent / "lab" / "machines" / host / "bmc.log").read_text()


def test_einj_on_a_rodata_page_panics_with_the_new_signature(runs, einj_lab):
    case = cases(runs, PLAIN)["einj-rodata-panic"]
    assert case.verdict == "pass", case.reasons
    needle = f"Memory failure: {case.pfn:#x}: unrecoverable page"
    assert any(e.source == "console" and needle in e.text for e in case.evidence), case.evidence
    assert any(e.source == "dump-dmesg" and needle in e.text for e in case.evidence), case.evidence
    assert case.boot_id_after != case.boot_id_before and case.dump
    # the platform firmware (the BMC) raised it: the SRAO machine check at the page's address
    assert f"EINJ type 0x10 at {case.pfn << 12:#x}: srao machine check raised" in bmc_log(einj_lab, PLAIN)


def test_einj_with_the_sysctl_off_is_ignored_and_the_host_survives(runs):
    case = cases(runs, PLAIN)["einj-rodata-survive"]
    assert case.verdict == "pass", case.reasons
    assert case.boot_id_after == case.boot_id_before
    assert any("reserved kernel page: Ignored" in e.text for e in case.evidence), case.evidence
    assert any(e.source == "inject" and e.text == "exit status 0" for e in case.evidence), case.evidence


def test_einj_fatal_is_a_fatal_machine_check_that_triage_calls_firmware_fatal(runs, einj_lab):
    code, _, folder, err = runs[PLAIN]
    case = cases(runs, PLAIN)["einj-fatal"]
    assert case.verdict == "pass", case.reasons
    assert any("Fatal machine check" in e.text for e in case.evidence), case.evidence
    assert code == 0, err
    assert f"EINJ type 0x20 at {case.pfn << 12:#x}: fatal machine check raised" in bmc_log(einj_lab, PLAIN)
    triage = cli("triage", "--json", str(folder / case.artifacts["dmesg"]), str(folder / case.artifacts["console.log"]))
    status, out, err = finished(triage, timeout=120)
    crashes = [json.loads(line) for line in out.splitlines()]
    assert crashes and {c["bucket"] for c in crashes} == {"firmware-fatal"}, (status, out, err)
    assert any("Fatal machine check" in (c["panic"] or "") for c in crashes)


def test_lockdown_blocks_einj_and_hwpoison_but_not_hard_offline_page(runs, einj_lab):
    code, _, _, err = runs[LOCKED]
    by_case = cases(runs, LOCKED)
    for name in ("einj-locked-down", "hwpoison-locked-down"):
        case = by_case[name]
        assert case.verdict == "error" and "Secure Boot lockdown" in case.reasons[0], (name, case.reasons)
        assert "lockdown (integrity)" in case.reasons[0] and case.pfn is None   # refused before targeting
    assert by_case["hardoff-locked-down"].verdict == "pass", by_case["hardoff-locked-down"].reasons
    assert code == 3, err
    # measured, not inferred from the lockdown file: the kernel refuses the einj write itself
    said = on_host(einj_lab, LOCKED, "{ echo 0x10 > /sys/kernel/debug/apei/einj/error_type; } 2>&1; "
                                     "dmesg | grep -c 'debugfs access is restricted'; true")
    assert "Operation not permitted" in said and int(said.split()[-1]) >= 1, said
