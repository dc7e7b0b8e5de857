"""Fleet safety end to end on a two-machine virtual lab, through the real transports: host
leases between runs, a controller SIGKILLed mid-case then disarm and resume, a restore the
host refuses, a dump that never comes, and a host that dies mid-run. (The fleet engine's
workers on the same lab: tests/test_e2e_engine.py.)

Out-of-band actions on a lab machine (what an operator or a failing host would do) go
through the orchestrator's own SSH transport with the inventory's pinned host key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.fleet import lease
from orchestrator.fleet.plan import RunPlan
from orchestrator.fleet.runner import Runner
from orchestrator.results.store import load_run
from orchestrator.transports.ssh import FabricShell
from vlabs import cli, finished, on_host, only_run, private_lab

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64]
REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = REPO / "tests" / "playbooks" / "fleet.yaml"
EARLY_KILL = "/proc/sys/vm/memory_failure_early_kill"     # 0 on the guests; the fleet cases set 1
H1, H2 = "vlab-x86-1", "vlab-x86-2"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    yield from private_lab(tmp_path_factory, arch="x86_64", hosts=2)


def shell(inventory: Path, host: str) -> FabricShell:
    return FabricShell(load_inventory(inventory).host(host).ssh)










def host_interval(case_dir: Path) -> tuple[float, float]:
    """First and last SSH command of a case on its host (commands.log, ms resolution)."""
    stamps = [datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()
              for line in (case_dir / "commands.log").read_text().splitlines() if line[:4].isdigit()]
    return min(stamps), max(stamps)


def in_process_run(inventory: Path, results: Path, hosts: tuple[str, ...], cases: tuple[str, ...], hook):
    plan = RunPlan.load(inventory, PLAYBOOK, hosts=hosts, cases=cases)
    return Runner.new(plan, results, on_state=hook).run()


def test_two_runs_on_one_host_take_turns_never_overlapping(lab, tmp_path):
    args = ("run", "-i", str(lab), str(PLAYBOOK), "--hosts", H1, "--cases", "survive-a,survive-c",
            "--lease-wait", "300")
    runs = [cli(*args, "--results", str(tmp_path / name)) for name in ("a", "b")]
    for proc in runs:
        code, _, err = finished(proc)
        assert code == 0, err
    intervals = sorted(host_interval(only_run(tmp_path / name) / H1 / case)
                       for name in ("a", "b") for case in ("survive-a", "survive-c"))
    for earlier, later in zip(intervals, intervals[1:]):
        assert later[0] >= earlier[1], f"two cases on {H1} at once: {earlier} and {later}"
    assert on_host(lab, H1, f"cat {EARLY_KILL}") == "0"


def test_a_host_leased_elsewhere_is_an_error_naming_the_holder_and_lease_break_frees_it(lab, tmp_path):
    holder = lease.Holder(run_id="their-nightly", controller="ctl-elsewhere:4242", user="bob", token="theirs")
    sh = shell(lab, H1)
    lease.take(sh, H1, load_inventory(lab).host(H1).state_dir, holder, ttl_s=600)
    sh.close()
    code, _, err = finished(cli("run", "-i", str(lab), str(PLAYBOOK), "--hosts", H1, "--cases", "survive-a",
                                "--results", str(tmp_path)))
    case = load_run(only_run(tmp_path)).cases[0]
    assert code == 3 and (case.verdict, case.blame) == ("error", "lab"), err
    assert "leased by bob on ctl-elsewhere:4242 (run their-nightly" in case.reasons[0]
    logs = [p.read_text() for p in only_run(tmp_path).rglob("commands.log")]
    assert not any("corrupt-pfn" in log for log in logs)                       # nothing was injected
    code, out, err = finished(cli("lease", "list", "-i", str(lab), "--hosts", H1))
    assert code == 0 and "their-nightly" in out, err
    code, out, err = finished(cli("lease", "break", H1, "-i", str(lab)))
    assert code == 0 and "broken" in out, err
    assert "free" in finished(cli("lease", "list", "-i", str(lab), "--hosts", H1))[1]


def test_sigkill_mid_case_then_disarm_restores_the_host_and_resume_finishes_the_run(lab, tmp_path):
    proc = cli("run", "-i", str(lab), str(PLAYBOOK), "--hosts", H1, "--results", str(tmp_path))
    for line in proc.stderr:                       # one plain progress line per state
        if "survive-a" in line and " targeted " in line:
            proc.send_signal(signal.SIGKILL)         # armed, about to inject: the worst moment
            break
    proc.wait(timeout=60)
    state_dir = load_inventory(lab).host(H1).state_dir
    assert on_host(lab, H1, f"cat {EARLY_KILL}") == "1"                       # left armed ...
    assert "run_id=" in on_host(lab, H1, f"cat {state_dir}/armed")           # ... and it says so
    code, out, err = finished(cli("disarm", "-i", str(lab), "--hosts", H1))
    assert code == 0 and "disarmed" in out, out + err
    assert on_host(lab, H1, f"cat {EARLY_KILL}; cat /sys/kernel/kexec_crash_loaded").split() == ["0", "1"]
    assert on_host(lab, H1, f"test -e {state_dir}/armed && echo armed || echo clean") == "clean"
    run_dir = only_run(tmp_path)
    code, _, err = finished(cli("run", "--resume", str(run_dir)))
    assert code == 0, err
    run = load_run(only_run(tmp_path))
    assert [(c.case, c.verdict) for c in run.cases] == [("survive-a", "pass"), ("panic-b", "pass"),
                                                        ("survive-c", "pass")]


def test_a_restore_the_host_refuses_is_an_error_left_armed_and_exit_3(lab, tmp_path):
    def refuse_restores(host, case, state):
        if state == "armed":   # the host will not take the original value back (read back as empty)
            on_host(lab, host, f"mount --bind /dev/null {EARLY_KILL}")

    try:
        run = in_process_run(lab, tmp_path, (H1,), ("survive-a",), refuse_restores)
    finally:
        on_host(lab, H1, f"umount {EARLY_KILL} 2>/dev/null; true")
    case = run.cases[0]
    assert (case.verdict, case.left_armed, run.exit_code()) == ("error", True, 3)
    assert any(r.startswith("restore: ") for r in case.reasons)
    assert "LEFT ARMED" in (only_run(tmp_path) / "report.html").read_text()
    code, out, err = finished(cli("disarm", "-i", str(lab), "--hosts", H1))
    assert code == 0 and "disarmed" in out, out + err
    assert on_host(lab, H1, f"cat {EARLY_KILL}") == "0"


def test_a_dump_that_never_comes_is_an_error_blamed_on_kdump_not_a_kernel_fail(lab, tmp_path):
    def lose_the_crash_kernel(host, case, state):
        if state == "armed":   # unloaded behind the cycle's back; kernel.panic=1 reboots without a dump
            on_host(lab, host, "kexec -p -u; echo 1 > /proc/sys/kernel/panic")

    run = in_process_run(lab, tmp_path, (H1,), ("panic-b",), lose_the_crash_kernel)
    case = run.cases[0]
    assert (case.verdict, case.blame, run.exit_code()) == ("error", "kdump", 3), case.reasons
    assert any("no new kdump dump" in r for r in case.reasons)
    assert any(e.source == "console" and "unrecoverable page" in e.text for e in case.evidence)


PYTEST_FACE_TESTS = """
import pytest

@pytest.mark.needs("hwpoison_inject")
@pytest.mark.parametrize("early_kill", [0, 1])
def test_rodata_is_ignored_with_the_sysctl_off(orch_host, orch_case, early_kill):
    result = orch_case(orch_host, injector="hwpoison_inject", target="kernel-rodata",
                       sysctls={"vm.panic_on_unrecoverable_memory_failure": 0,
                                "vm.memory_failure_early_kill": early_kill},
                       expect={"outcome": "survive", "action": {"label": "reserved kernel page", "result": "Ignored"}})
    assert result.verdict == "pass", result.reasons

def test_a_case_limited_to_arm_is_skipped_here(orch_host, orch_case):
    orch_case(orch_host, injector="hwpoison_inject", target="slab", limit={"arches": ["aarch64"]},
              expect={"outcome": "panic"})
"""


def test_the_pytest_face_spreads_hosts_over_xdist_workers_into_one_run_folder(lab, tmp_path):
    (tmp_path / "test_lab.py").write_text(PYTEST_FACE_TESTS)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "-n", "2",
                           "--dist", "loadgroup", f"--inventory={lab}", f"--orch-results={tmp_path / 'results'}",
                           "test_lab.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed, 2 skipped" in done.stdout, done.stdout
    assert "test_lab.py:" in done.stdout and "pytest_plugin.py" not in done.stdout   # skips point at the test
    run_dir = only_run(tmp_path / "results")
    run = load_run(run_dir)
    assert sorted((c.host, c.verdict) for c in run.cases) == sorted(
        [(h, "pass") for h in (H1, H2) for _ in range(2)] + [(h, "skip") for h in (H1, H2)])
    assert (run_dir / "junit.xml").is_file() and (run_dir / "report.html").is_file()
    for host in (H1, H2):       # whichever worker ran them, one host's cases one after another
        spans = sorted(host_interval(p.parent) for p in (run_dir / host).glob("*/commands.log")
                       if p.parent.name != "_host")      # the host's facts, read when a worker opens it
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans


def test_a_host_that_dies_mid_run_ends_its_remaining_cases_at_once_while_the_other_goes_on(lab, tmp_path):
    machine_dir = Path(os.environ["ORCH_LAB_DIR"]) / "machines" / H2

    def kill_h2(host, case, state):
        if host == H2 and case == "survive-a" and state == "armed":   # the machine and its BMC die at once
            for pid_file in ("bmc.pid", "qemu.pid"):
                os.kill(int((machine_dir / pid_file).read_text()), signal.SIGKILL)

    started = time.monotonic()
    run = in_process_run(lab, tmp_path, (H1, H2), ("survive-a", "survive-c"), kill_h2)
    by = {(c.host, c.case): c for c in run.cases}
    assert by[(H1, "survive-a")].verdict == by[(H1, "survive-c")].verdict == "pass"
    lost, rest = by[(H2, "survive-a")], by[(H2, "survive-c")]
    assert lost.verdict == "error" and rest.verdict == "error"
    assert rest.reasons[0].startswith("host lost in case survive-a: ") and not rest.timings
    assert time.monotonic() - started < 300
