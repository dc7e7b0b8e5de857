"""End to end on a mixed virtual lab: one x86_64 and one aarch64 machine in one lab (one
inventory), and one ``orchestrator run`` of the smoke playbook that drives both in parallel."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.faces.cli.main import main
from orchestrator.results.store import load_run
from vlabs import only_run, private_lab

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64, pytest.mark.aarch64]
REPO = Path(__file__).resolve().parent.parent
HOSTS = {"vlab-x86-1": "x86_64", "vlab-arm-1": "aarch64"}


@pytest.fixture(scope="module")
def mixed_lab(tmp_path_factory) -> Path:
    yield from private_lab(tmp_path_factory, arch="x86_64,aarch64")


def window(cases) -> tuple[datetime, datetime]:
    starts = [datetime.fromisoformat(c.started_at) for c in cases]
    return min(starts), max(s + timedelta(seconds=c.seconds) for s, c in zip(starts, cases))


def test_one_run_of_the_smoke_playbook_covers_both_arches_in_parallel(mixed_lab, tmp_path):
    from orchestrator.vlab.lab import lifecycle as lab

    status = {row["machine"]: row for row in lab.lab_status()}
    assert {name: (row["arch"], row["power"], row["ready"]) for name, row in status.items()} == {
        name: (arch, "on", "yes") for name, arch in HOSTS.items()}
    # no -i: the virtual lab's inventory, and the running mixed lab is kept as it is
    code = main(["run", str(REPO / "playbooks/smoke.yaml"), "--results", str(tmp_path)])
    run = load_run(only_run(tmp_path))
    assert {h.host: h.arch for h in run.hosts} == HOSTS
    verdicts = {(c.host, c.case): (c.verdict, c.reasons) for c in run.cases}
    assert {key: verdict for key, (verdict, _) in verdicts.items()} == {
        (host, case): "pass" for host in HOSTS for case in ("rodata-panic", "rodata-survive")}, verdicts
    assert code == 0
    x86, arm = (window([c for c in run.cases if c.host == host]) for host in HOSTS)
    assert x86[0] < arm[1] and arm[0] < x86[1], f"the hosts ran one after the other: {x86}, {arm}"
    for case in run.cases:
        if case.case == "rodata-panic":
            # each arch's own kernel panicked and dumped (arm64 7.3: makedumpfile cannot read the
            # vmcore; the dump holds vmcore-dmesg + VMCOREINFO)
            assert case.dump["vmcoreinfo"]["OSRELEASE"].endswith({"vlab-x86-1": "amd64",
                                                                 "vlab-arm-1": "arm64"}[case.host])
            assert any(e.source == "dump-dmesg" and f"{case.pfn:#x}: unrecoverable page" in e.text
                       for e in case.evidence)


def test_lab_down_stops_both_arches(mixed_lab):
    """Last in this module: it takes the lab down."""
    import os
    import subprocess

    from orchestrator.vlab.lab import lifecycle as lab

    lab.lab_down(log=lambda _: None)
    assert lab.lab_status() == []
    lab_dir = os.environ["ORCH_LAB_DIR"]
    left = subprocess.run(["pgrep", "-af", f"{lab_dir}/"], capture_output=True, text=True).stdout
    assert not left, left
