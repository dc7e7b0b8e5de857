"""Host drills on a one-machine virtual lab, through the real transports: each test makes one
thing go wrong around a case (a kernel that does not panic, a crash kernel that hangs or
dies part way, stale dumps, a full dump disk, a controller interrupted, a second run on the
host, a full results disk) and checks the verdict and its blame, the exit status, that
nothing already written was lost, and that the host is left neither armed nor leased.

Crash kernel faults are the lab's one-shot flag files (orchestrator/vlab/image/guest/
crash-dump.sh, /mnt/disk/vlab-fault/<name> on the running guest). The SIGKILL drill (killed
mid-case, then disarm, then resume) is tests/test_e2e_fleet.py
test_sigkill_mid_case_then_disarm_restores_the_host_and_resume_finishes_the_run."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
from pathlib import Path

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.errors import EXIT_FAIL, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK
from orchestrator.fleet.plan import RunPlan
from orchestrator.fleet.runner import Runner
from orchestrator.results.store import load_case_results, load_run
import vlabs
from vlabs import cli, finished, only_run, private_lab

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64]
REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "tests" / "playbooks" / "drills.yaml"
EARLY_KILL = "/proc/sys/vm/memory_failure_early_kill"     # 0 on the guests; the drill cases set 1
PANIC_SYSCTL = "/proc/sys/vm/panic_on_unrecoverable_memory_failure"
FAULTS = "/mnt/disk/vlab-fault"                           # crash-dump.sh's lab faults
FILLER = "/var/crash/drill-filler"
H = "vlab-x86-1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    yield from private_lab(tmp_path_factory, arch="x86_64", hosts=1)


@pytest.fixture
def host(lab):
    """The lab's host for one drill; afterwards no fault flag or filler is left for the next."""
    yield lab
    on_host(lab, f"rm -rf {FAULTS} {FILLER}; sync; true")


def on_host(inventory: Path, command: str) -> str:
    return vlabs.on_host(inventory, H, command)


def assert_host_clean(inventory: Path) -> None:
    """Neither armed (the case's sysctl put back, no journal) nor leased."""
    state_dir = load_inventory(inventory).host(H).state_dir
    seen = on_host(inventory, f"cat {EARLY_KILL}; for f in armed lease; do test -e {state_dir}/$f && echo $f; done; true")
    assert seen.split() == ["0"], f"host left {seen!r} (early_kill, then journal/lease files)"


def set_fault(inventory: Path, name: str) -> None:
    on_host(inventory, f"mkdir -p {FAULTS} && touch {FAULTS}/{name} && sync")








class Written:
    """What a run had written when a fault struck, to prove afterwards it is all still there."""

    def __init__(self):
        self.files: dict[Path, bytes] = {}

    def take(self, run_dir: Path, host: str, case: str) -> None:
        path = run_dir / host / case / "result.json"
        self.files[path] = path.read_bytes()
        json.loads(self.files[path])

    def assert_intact(self) -> None:
        assert self.files, "nothing was taken"
        for path, data in self.files.items():
            assert path.read_bytes() == data, f"{path} changed"
        load_run(next(iter(self.files)).parents[2])              # run.json parses


def drill(inventory: Path, results: Path, fault, cases=("survive-a", "panic-b")):
    """Run ``cases`` in process; ``fault(host, case, state)`` strikes during the last one,
    after the earlier cases' results were taken to be checked afterwards."""
    written = Written()
    runner = None

    def hook(host, case, state):
        if case == cases[-1] and state == "preflight":
            for earlier in cases[:-1]:
                written.take(runner.run_dir, host, earlier)
        fault(host, case, state)

    runner = Runner.new(RunPlan.load(inventory, PLAYBOOK, hosts=(H,), cases=cases), results, on_state=hook)
    run = runner.run()
    if len(cases) > 1:
        written.assert_intact()
    return run, run.cases[-1]


# 4 ----------------------------------------------------------------------------------------
def test_a_panic_case_whose_host_never_panics_fails_on_the_kernel_within_the_panic_deadline(host, tmp_path):
    def unset_the_panic(h, case, state):
        if case == "panic-b" and state == "armed":     # the kernel will ignore the page and go on
            on_host(host, f"echo 0 > {PANIC_SYSCTL}")

    run, case = drill(host, tmp_path, unset_the_panic)
    assert (case.verdict, case.blame, run.exit_code()) == ("fail", "kernel", EXIT_FAIL), case.reasons
    observed = next(t for t in case.timings if t.state in ("survived", "panicked", "lost"))
    assert observed.state == "survived" and observed.seconds <= 20 + 10, case.timings
    assert any("Ignored" in e.text or "reserved kernel page" in e.text for e in case.evidence), case.evidence
    assert case.boot_id_after in (None, case.boot_id_before)
    assert_host_clean(host)


# 5 ----------------------------------------------------------------------------------------
def test_a_hung_crash_kernel_is_brought_back_by_nmi_and_power_cycle_and_blamed_on_kdump(host, tmp_path):
    def hang_the_crash_kernel(h, case, state):
        if case == "panic-b" and state == "armed":
            set_fault(host, "crash-hang")

    run, case = drill(host, tmp_path, hang_the_crash_kernel)
    assert (case.verdict, case.blame, run.exit_code()) == ("error", "kdump", EXIT_INFRA), case.reasons
    assert any("no new kdump dump" in r for r in case.reasons), case.reasons
    actions = " ".join(case.recovery).lower()
    assert "nmi" in actions and "power" in actions, case.recovery
    assert "wedged" in [t.state for t in case.timings]
    assert on_host(host, f"ls {FAULTS}") == ""                 # the fault was taken once
    assert_host_clean(host)


# 6 ----------------------------------------------------------------------------------------
def test_a_dump_left_incomplete_is_an_error_blamed_on_kdump_with_the_flag_recorded(host, tmp_path):
    def kill_makedumpfile(h, case, state):
        if case == "panic-b" and state == "armed":
            set_fault(host, "dump-truncate")

    run, case = drill(host, tmp_path, kill_makedumpfile)
    assert (case.verdict, case.blame, run.exit_code()) == ("error", "kdump", EXIT_INFRA), case.reasons
    assert "the dump is incomplete" in case.reasons, case.reasons
    assert case.dump and case.dump["incomplete"] is True, case.dump
    assert "dump-incomplete" in json.dumps(case.dump)
    assert_host_clean(host)


# 7 ----------------------------------------------------------------------------------------
def plant_stale_dumps(inventory: Path) -> list[str]:
    """Dump folders of an 'earlier boot': this minute's and the next (the new dump will be
    written into one of them), and one named after every dump to come; all old files."""
    stamps = on_host(inventory, "date +%Y%m%d%H%M; date -d @$(( $(date +%s) + 60 )) +%Y%m%d%H%M").split()
    stamps.append("209912312359")
    for stamp in stamps:
        on_host(inventory, f"d=/var/crash/{stamp}; mkdir -p $d && echo 'stale dmesg of an earlier boot' >$d/dmesg.{stamp}"
                           f" && echo CRASHTIME=1000 >$d/vmcoreinfo.{stamp} && echo stale >$d/dump.{stamp}"
                           f" && touch -d '2020-01-01 00:00:00' $d/* && sync")
    return stamps


def test_stale_dumps_even_one_rewritten_in_the_same_minute_are_not_taken_for_the_new_one(host, tmp_path):
    stamps = plant_stale_dumps(host)
    try:
        run, case = drill(host, tmp_path, lambda *a: None)
    finally:
        on_host(host, "rm -rf /var/crash/209912312359")
    assert (case.verdict, run.exit_code()) == ("pass", EXIT_OK), case.reasons
    assert case.dump["id"] != "209912312359", case.dump
    assert int(case.dump["vmcoreinfo"]["CRASHTIME"]) > 1000, case.dump
    assert "stale dmesg" not in (tmp_path / run.run_id / H / "panic-b" / "dmesg").read_text()
    assert case.dump["id"] in stamps[:2] or case.dump["id"] > stamps[1]
    assert_host_clean(host)


# 9 ----------------------------------------------------------------------------------------
def test_a_full_dump_disk_is_an_error_blamed_on_kdump_and_the_host_comes_back(host, tmp_path):
    def fill_the_dump_disk(h, case, state):
        if case == "panic-b" and state == "armed":    # armed first: the journal is on the same disk
            # all free blocks, root's reserve too (the crash kernel writes as root), but ~1.5 MiB:
            # room for the journal, the lease and the dump's dmesg, none for the dump itself
            on_host(host, "set -- $(stat -f -c '%f %S' /var/crash); size=$(( $1 * $2 - 1536 * 1024 )); "
                          f"until fallocate -l $size {FILLER}; do rm -f {FILLER}; size=$(( size - 1048576 )); done; sync")

    try:
        run, case = drill(host, tmp_path, fill_the_dump_disk)
        assert (case.verdict, case.blame, run.exit_code()) == ("error", "kdump", EXIT_INFRA), case.reasons
        assert any("incomplete" in r or "no new kdump dump" in r for r in case.reasons), case.reasons
        assert case.boot_id_after and case.boot_id_after != case.boot_id_before    # back, rebooted
    finally:
        on_host(host, f"rm -f {FILLER}; sync")
    assert int(on_host(host, "df -k /var/crash | awk 'NR==2 {print $4}'")) > 16 * 1024   # space freed
    assert_host_clean(host)


# 10 ---------------------------------------------------------------------------------------
def test_sigint_mid_case_finishes_and_restores_it_exits_130_and_resume_completes_the_run(host, tmp_path):
    proc = cli("run", "-i", str(host), str(PLAYBOOK), "--hosts", H, "--cases", "survive-a,survive-c",
               "--results", str(tmp_path))
    lines = []
    for line in proc.stderr:                       # one plain progress line per state
        lines.append(line)
        if "survive-a" in line and " armed " in line:
            proc.send_signal(signal.SIGINT)
            break
    code, _, err = finished(proc)
    err = "".join(lines) + err
    assert code == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "carry on with: orchestrator run --resume" in err, err
    run_dir = only_run(tmp_path)
    first = (run_dir / H / "survive-a" / "result.json").read_bytes()
    assert json.loads(first)["verdict"] == "pass"               # the case in flight finished
    assert not (run_dir / H / "survive-c" / "result.json").exists()   # and nothing new started
    assert_host_clean(host)
    code, _, err = finished(cli("run", "--resume", str(run_dir)))
    assert code == EXIT_OK, err
    assert only_run(tmp_path) == run_dir and (run_dir / H / "survive-a" / "result.json").read_bytes() == first
    assert [(c.case, c.verdict) for c in load_run(run_dir).cases] == [("survive-a", "pass"), ("survive-c", "pass")]
    assert_host_clean(host)


# 11 ---------------------------------------------------------------------------------------
def test_a_second_run_on_a_busy_host_without_lease_wait_errs_naming_the_holder_and_injects_nothing(host, tmp_path):
    loser = {}

    def second_run_meanwhile(h, case, state):
        if case == "survive-a" and state == "armed":   # the first run holds the host's lease
            loser["result"] = finished(cli("run", "-i", str(host), str(PLAYBOOK), "--hosts", H,
                                           "--cases", "survive-a", "--results", str(tmp_path / "b")))

    run, case = drill(host, tmp_path / "a", second_run_meanwhile, cases=("survive-a",))
    assert (case.verdict, run.exit_code()) == ("pass", EXIT_OK), case.reasons
    code, _, err = loser["result"]
    lost = load_run(only_run(tmp_path / "b")).cases[0]
    assert code == EXIT_INFRA and (lost.verdict, lost.blame) == ("error", "lab"), err
    assert f"(run {run.run_id}" in lost.reasons[0] and "nothing was injected" in lost.reasons[0], lost.reasons
    logs = [p.read_text() for p in only_run(tmp_path / "b").rglob("commands.log")]
    assert not any("corrupt-pfn" in log or "hwpoison" in log for log in logs)
    assert load_run(only_run(tmp_path / "a")).cases[0].verdict == "pass"      # both folders intact
    assert_host_clean(host)


# 12 ---------------------------------------------------------------------------------------
def fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_a_full_results_disk_keeps_what_was_written_exits_3_in_one_line_and_leaves_no_host_armed(host, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(results)], check=True)
    try:
        proc = cli("run", "-i", str(host), str(PLAYBOOK), "--hosts", H, "--cases", "survive-a,survive-c",
                   "--results", str(results))
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "survive-c" in line and " armed " in line:
                run_dir = only_run(results)
                before = (run_dir / H / "survive-a" / "result.json").read_bytes()
                fill(results)
                break
        code, _, err = finished(proc)
        err = "".join(lines) + err
        assert code == EXIT_INFRA, err
        assert "Traceback" not in err, err
        said = [line for line in err.splitlines() if line.startswith("orchestrator:")]
        assert len(said) == 1 and "results folder refused a write" in said[0], err
        assert (run_dir / H / "survive-a" / "result.json").read_bytes() == before
        load_run(run_dir)                                           # still parses (it may lag by REPORT_INTERVAL_S)
        assert [(c.case, c.verdict) for c in load_case_results(run_dir)] == [("survive-a", "pass")]
        assert not list(run_dir.rglob("*.tmp")), list(run_dir.rglob("*.tmp"))   # no half-written file
        assert_host_clean(host)
    finally:
        subprocess.run(["umount", str(results)], check=False)
