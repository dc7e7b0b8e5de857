"""One playbook, two kernel semantics: the same playbooks/nightly.yaml on a lab that holds a
machine on the trixie-backports 7.3 kernel (has vm.panic_on_unrecoverable_memory_failure:
"v10-like") beside one on Debian 12's 6.1 kernel (lacks it: "legacy").

On 6.1 every case limited to `sysctls_present: [the sysctl]` must be skipped with that reason,
and `legacy-recovery-off` (vm.memory_failure_recovery=0) must panic with the legacy signature
"Memory failure on page <hex>" and pass; on 7.3 every case must pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator.faces.cli.main import main
from orchestrator.config.inventory import load_inventory
from orchestrator.kernel.semantics import probe_semantics
from orchestrator.results.store import load_run
from orchestrator.transports.ssh import FabricShell
from vlabs import lacks_injector, nightly_cases, private_lab

pytestmark = [pytest.mark.vlab, pytest.mark.slow, pytest.mark.x86_64]
REPO = Path(__file__).resolve().parent.parent
NIGHTLY = REPO / "playbooks" / "nightly.yaml"
SYSCTL = "vm.panic_on_unrecoverable_memory_failure"
#: lab machine -> (kernel flavour, release prefix, semantics the probe must find)
MACHINES = {"vlab-x86-1": ("backports", "7.3.", "v10-like"),
            "vlab-x86-2": ("bookworm", "6.1.", "legacy")}


@pytest.fixture(scope="module")
def mixed_lab(tmp_path_factory) -> Iterator[Path]:
    """A private two-machine lab (7.3 + 6.1); yields its inventory and always takes it down."""
    yield from private_lab(tmp_path_factory, kernels=tuple(kernel for kernel, _, _ in MACHINES.values()))


def sysctl_limited_cases() -> set[str]:
    cases = yaml.safe_load(NIGHTLY.read_text())["cases"]
    return {c["name"] for c in cases if SYSCTL in c.get("limit", {}).get("sysctls_present", [])}


def test_lab_records_each_machines_kernel(mixed_lab):
    from orchestrator.vlab.lab import lifecycle as lab

    for machine in lab.read_lab():
        kernel, release, _ = MACHINES[machine.name]
        assert (machine.kernel, machine.kernel_release[:len(release)]) == (kernel, release)
    platforms = {h.name: h.platform for h in load_inventory(mixed_lab).hosts}
    assert platforms == {name: "qemu-x86_64" for name in MACHINES}


def test_probe_tells_the_semantics_apart_over_ssh(mixed_lab):
    for host in load_inventory(mixed_lab).hosts:
        _, release, expected = MACHINES[host.name]
        shell = FabricShell(host.ssh)
        try:
            found = probe_semantics(shell)
        finally:
            shell.close()
        assert found.name == expected, (host.name, found.evidence)
        assert found.evidence[0].startswith(f"kernel release {release}")


def test_nightly_passes_on_both_kernels(mixed_lab, tmp_path):
    code = main(["run", "-i", str(mixed_lab), str(NIGHTLY), "--results", str(tmp_path),
                 "--cases", nightly_cases(without_injector="qemu_mce")])
    run_dir, = [p for p in tmp_path.iterdir() if p.is_dir()]
    run = load_run(run_dir)
    facts = {h.host: h for h in run.hosts}
    for name, (_, release, semantics) in MACHINES.items():
        assert facts[name].kernel_release.startswith(release), facts[name]
        assert facts[name].semantics == semantics, facts[name]
    cases = {(c.host, c.case): c for c in run.cases}
    limited = sysctl_limited_cases()
    assert limited and "legacy-recovery-off" not in limited

    new, old = "vlab-x86-1", "vlab-x86-2"
    for (host, name), case in sorted(cases.items()):
        if lacks_injector(case):     # x86 lab machines have no GHES
            continue
        if host == new or name not in limited:
            assert case.verdict == "pass", (host, name, case.reasons)
        else:   # the 6.1 machine lacks the sysctl: skipped, and the reason says which
            assert case.verdict == "skip", (host, name, case.reasons)
            assert any(SYSCTL in reason for reason in case.reasons), case.reasons
    assert {name for host, name in cases if host == old} == {name for host, name in cases if host == new}

    legacy = cases[(old, "legacy-recovery-off")]
    needle = f"Kernel panic - not syncing: Memory failure on page {legacy.pfn:x}"
    assert any(needle in e.text for e in legacy.evidence), legacy.evidence
    assert legacy.boot_id_after and legacy.boot_id_after != legacy.boot_id_before
    assert legacy.dump and legacy.dump["vmcoreinfo"]["OSRELEASE"].startswith("6.1.")
    assert code == 0
