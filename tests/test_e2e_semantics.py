"""One playbook, three kernels, each one's semantics measured: a lab with a machine on the
pinned trixie-backports 7.3 kernel (has vm.panic_on_unrecoverable_memory_failure; no symbol
decides, so the slab probe measures "v10-like"), one on the pinned 7.2 (no sysctl: "legacy")
and one on Debian 12's 6.1 (no sysctl: "legacy").

tests/playbooks/semantics.yaml's cases take every expectation from the semantics found
(`outcome: matrix`): each must pass where it applies, and `slab-on` must be skipped on the two
kernels without the sysctl, saying so. The whole nightly per kernel: bench/bench_semantics.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.cycle.handles import PerBoot
from orchestrator.faces.cli.main import main
from orchestrator.results.store import load_run
from orchestrator.transports.ssh import FabricShell
from orchestrator.vlab.image.kernels import PINNED
from vlabs import on_host, private_lab

pytestmark = [pytest.mark.vlab, pytest.mark.slow, pytest.mark.x86_64]
REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = REPO / "tests" / "playbooks" / "semantics.yaml"
SYSCTL = "vm.panic_on_unrecoverable_memory_failure"
KNOBS = "/proc/sys/vm/panic_on_unrecoverable_memory_failure /proc/sys/vm/memory_failure_recovery"
#: lab machine -> (kernel flavour, release prefix, semantics the host must be found to have)
MACHINES = {"vlab-x86-1": ("backports", PINNED["backports"], "v10-like"),
            "vlab-x86-2": ("backports-7.2", PINNED["backports-7.2"], "legacy"),
            "vlab-x86-3": ("bookworm", "6.1.", "legacy")}


@pytest.fixture(scope="module")
def three_kernels(tmp_path_factory) -> Iterator[Path]:
    """A private lab, one machine per kernel; yields its inventory and always takes it down."""
    yield from private_lab(tmp_path_factory, kernels=tuple(kernel for kernel, _, _ in MACHINES.values()))


def test_lab_runs_the_pinned_kernels(three_kernels):
    from orchestrator.vlab.lab import lifecycle as lab

    for machine in lab.read_lab():
        kernel, release, _ = MACHINES[machine.name]
        assert (machine.kernel, machine.kernel_release[:len(release)]) == (kernel, release)


def test_slab_probe_measures_v10_puts_the_sysctls_back_and_is_cheap(three_kernels):
    host = load_inventory(three_kernels).host("vlab-x86-1")
    on_host(three_kernels, host.name, "echo 1 > /proc/sys/vm/panic_on_unrecoverable_memory_failure")
    shell = FabricShell(host.ssh)
    try:
        shell.run("true", timeout=30)                    # connected: time the probe, not SSH
        started = time.monotonic()
        found = ExpectationResolver(host).probe(shell, per_boot=PerBoot(), boot_id="this boot")
        took = time.monotonic() - started
        after = shell.run(f"cat {KNOBS}", timeout=30).stdout.split()
    finally:
        on_host(three_kernels, host.name, "echo 0 > /proc/sys/vm/panic_on_unrecoverable_memory_failure")
        shell.close()
    print(f"slab probe on {host.name}: {took:.2f} s: {found.evidence[-1]}")
    assert found.name == "v10-like", found.evidence
    assert "recovery action for reserved kernel page: Ignored" in found.evidence[-1]
    assert after == ["1", "1"]                           # exactly as before the probe
    assert took < 4.0, f"the probe took {took:.2f} s (measured ~1 s on an idle lab)"


def test_each_kernel_passes_with_its_measured_semantics(three_kernels, tmp_path):
    code = main(["run", "-i", str(three_kernels), str(PLAYBOOK), "--results", str(tmp_path)])
    run_dir, = [p for p in tmp_path.iterdir() if p.is_dir()]
    run = load_run(run_dir)
    facts = {h.host: h for h in run.hosts}
    for name, (_, release, semantics) in MACHINES.items():
        assert facts[name].kernel_release.startswith(release), facts[name]
        assert facts[name].semantics == semantics, facts[name]
    assert any(e.startswith("measured: ") for e in facts["vlab-x86-1"].semantics_evidence)
    assert any(e.startswith("no " + SYSCTL) for e in facts["vlab-x86-2"].semantics_evidence)

    cases = {(c.host, c.case): c for c in run.cases}
    for (host, name), case in sorted(cases.items()):
        if name == "slab-on" and MACHINES[host][2] == "legacy":
            assert case.verdict == "skip" and any(SYSCTL in r for r in case.reasons), case.reasons
            continue
        assert case.verdict == "pass", (host, name, case.reasons)
        semantics = [e.text for e in case.evidence if e.source == "semantics"]
        assert semantics and semantics[0].startswith(MACHINES[host][2]), case.evidence
    new = cases[("vlab-x86-1", "slab-on")]
    assert new.expect["outcome"] == "panic" and new.boot_id_after != new.boot_id_before
    assert cases[("vlab-x86-1", "slab-default")].expect["action_label"] == "reserved kernel page"
    for host in ("vlab-x86-2", "vlab-x86-3"):
        legacy = cases[(host, "recovery-off")]
        needle = f"Kernel panic - not syncing: Memory failure on page {legacy.pfn:x}"
        assert any(needle in e.text for e in legacy.evidence), legacy.evidence
    assert code == 0
