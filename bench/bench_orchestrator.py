"""Benchmark of the orchestrator on the virtual lab; prints its figures (not a timed test).

    .venv/bin/python bench/bench_orchestrator.py [--nightly] [--keep-lab] [--costs N]

Measures, against the issue's targets:
  * per-phase times of one panic case (smoke's rodata-panic);
  * the orchestrator's own overhead: cycle time minus time spent in host calls (SSH, BMC,
    console waits), and the controller's CPU time during the cycle;
  * panic noticed after its line reached the console (target <= 0.2 s);
  * reboot noticed after the guest's sshd started (console "VLAB: sshd started"; target <= 1 s);
  * smoke.yaml wall time (target <= 3 min) and, with --nightly, nightly.yaml (<= 12 min);
  * what the orchestrator adds to each case, through the real runner (lease, arm journal,
    cycle, results): a panic case's wall time against its `dumped` phase (the host's own
    panic -> dump -> reboot -> SSH; target <= 1.15x), a survive case's wall time (target
    <= 3 s; right after the panic case, and again on the settled host), SSH commands per
    case, and the lease's own cost per case (target <= 50 ms);
  * controller peak memory (target <= 150 MB).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.faces.cli.main import main as cli_main  # noqa: E402
from orchestrator.config.inventory import load_inventory  # noqa: E402
from orchestrator.config.playbook import load_playbook  # noqa: E402
from orchestrator.cycle.machine import CaseCycle  # noqa: E402
from orchestrator.cycle.expectations import ExpectationResolver  # noqa: E402
from orchestrator.vlab.lab import lifecycle as lab  # noqa: E402
from orchestrator.fleet.host_handles import open_host  # noqa: E402

SSHD_STARTED = re.compile(r"VLAB: sshd started")
# Smoke runs its survive case right after its panic case, into the end of the host's boot:
# on a lab guest (one TCG vCPU) the first commands after a panic case answered in 0.2-0.5 s
# instead of 0.06-0.12 s for ~1.5 s, in one of two tries. The same case once more, on the
# host that has settled, shows what the orchestrator itself adds to a survive case.
SETTLED = ", the survive case again on the settled host"


def one_panic_case(inventory: Path, work: Path) -> None:
    host = load_inventory(inventory).hosts[0]
    case = load_playbook(REPO / "playbooks/smoke.yaml").select(("rodata-panic",)).cases[0]
    with open_host(host, work / "bench-case") as session:
        handles = session.handles
        assert handles.console is not None and handles.console.wait_until_healthy(30), "no SOL console"
        cycle = CaseCycle(handles, case, expect_resolver=ExpectationResolver(host))
        cpu0 = time.process_time()
        run = cycle.run()
        cpu = time.process_time() - cpu0
    result, panic = run.result, run.panic
    print(f"\none panic case ({case.name}) on {host.name}: verdict {result.verdict} in {result.seconds:.1f} s")
    print(f"  {'phase':<11}{'seconds':>9}{'waited':>9}{'own':>8}  note")
    own_total = 0.0
    for t in result.timings:
        own = t.seconds - t.waited
        own_total += own
        print(f"  {t.state:<11}{t.seconds:9.2f}{t.waited:9.2f}{own:8.3f}  {t.note[:60]}")
    share = 100 * own_total / result.seconds if result.seconds else 0.0
    print(f"  orchestrator overhead (cycle - host waits): {own_total:.3f} s = {share:.2f} % of the cycle"
          f"  [target <= 2 % and <= 1 s]")
    print(f"  controller CPU time during the cycle: {cpu:.3f} s")
    if panic is not None:
        print(f"  panic noticed {1000 * (panic.noticed_t - panic.t):.1f} ms after its console line completed"
              f"  [target <= 200 ms]; kernel panic {result.panic_after_inject_s:.3f} s after the injection was fired")
    dumped = [t for t in result.timings if t.state == "dumped"]
    sshd = [line for line in run.console or () if SSHD_STARTED.search(line.text)]
    if dumped and sshd:
        noticed = run.started + dumped[0].started + dumped[0].seconds
        print(f"  reboot noticed {noticed - sshd[-1].t:.2f} s after the guest's sshd started  [target <= 1 s]")


def case_costs(inventory: Path, work: Path, cases: tuple[str, ...] = (), title: str = "") -> None:
    """Smoke's cases (or those named) through the runner, each from the moment its host's
    thread begins it to its result written; the lease's cost timed where a case or the run
    waits for it (LeaseKeeper.take and .release, the host's opening included), the background
    renewals on the lease's own connection counted apart."""
    from orchestrator.fleet import host_run, lease_keeper
    from orchestrator.fleet.plan import RunPlan
    from orchestrator.fleet.runner import Runner

    spent, calls, began, renewals = [0.0], [], {}, [0]
    real = (lease_keeper.LeaseKeeper.take, lease_keeper.LeaseKeeper.release, lease_keeper.lease.take,
            host_run.HostRun._one_case)

    def timed(call):
        def wrapper(*args, **kw):
            t0 = time.monotonic()
            try:
                return call(*args, **kw)
            finally:
                spent[0] += time.monotonic() - t0
                calls.append(f"{call.__name__} {1000 * (time.monotonic() - t0):.0f}")
        return wrapper

    def counted(*args, **kw):
        renewals[0] += 1
        return real[2](*args, **kw)

    def one_case(self, case):
        began[case.name] = time.monotonic()
        return real[3](self, case)

    lease_keeper.LeaseKeeper.take, lease_keeper.LeaseKeeper.release = timed(real[0]), timed(real[1])
    lease_keeper.lease.take, host_run.HostRun._one_case = counted, one_case
    ends = {}
    try:
        plan = RunPlan.load(inventory, REPO / "playbooks/smoke.yaml", cases=cases)
        t0 = time.monotonic()
        run = Runner.new(plan, work / "costs", on_state=lambda h, c, s: ends.setdefault(
            (c, s.split(":")[0]), time.monotonic())).run()
        run_wall = time.monotonic() - t0
    finally:
        (lease_keeper.LeaseKeeper.take, lease_keeper.LeaseKeeper.release, lease_keeper.lease.take,
         host_run.HostRun._one_case) = real
    print(f"\nper case through the runner (lease + arm journal + cycle + result written){title}:")
    for case in run.cases:
        wall = ends[(case.case, "done")] - began[case.case]
        dumped = sum(t.seconds for t in case.timings if t.state == "dumped")
        ratio = (f"{wall / dumped:.2f}x its dumped phase ({dumped:.1f} s) [target <= 1.15x]" if dumped
                 else "[target <= 3 s]")
        print(f"  {case.case:<16} {case.verdict:<5} wall {wall:5.1f} s = {ratio}")
        print("    phases: " + ", ".join(f"{t.state} {t.seconds:.2f}" for t in case.timings)
              + f"; outside the cycle {wall - sum(t.seconds for t in case.timings):.2f}")
    print(f"  run wall {run_wall:.1f} s (host opened and probed, cases, lease given back, reports)")
    if cases:       # one case alone pays the whole release (one round trip): not the per-case figure
        return
    print(f"  lease take + release waited for: {1000 * spent[0] / len(run.cases):.0f} ms per case "
          f"[target <= 50 ms]; lease commands sent in all (takes, renewals): {renewals[0]}")
    print(f"  lease calls waited for (ms): {', '.join(calls)}")


def timed_playbook(inventory: Path, playbook: str, results: Path) -> None:
    t0 = time.monotonic()
    code = cli_main(["run", "-i", str(inventory), str(REPO / playbook), "--results", str(results)])
    target = {"playbooks/smoke.yaml": 180, "playbooks/nightly.yaml": 720}[playbook]
    print(f"\n{playbook}: exit {code}, wall {time.monotonic() - t0:.1f} s  [target <= {target} s]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nightly", action="store_true", help="also time playbooks/nightly.yaml")
    parser.add_argument("--keep-lab", action="store_true", help="leave the bench lab up afterwards")
    parser.add_argument("--costs", type=int, default=1, metavar="N",
                        help="run the per-case costs N times (only those, when N > 1)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    os.environ.setdefault("ORCH_LAB_DIR", str(work / "lab"))
    os.environ.setdefault("ORCH_VIRTUAL_INVENTORY", str(work / "virtual.yaml"))
    inventory = Path(os.environ["ORCH_VIRTUAL_INVENTORY"])
    t0 = time.monotonic()
    lab.lab_up(hosts=1, arch="x86_64", log=lambda _: None)
    print(f"lab up (one x86_64 machine, ready with kdump armed): {time.monotonic() - t0:.1f} s")
    try:
        if args.costs > 1:
            for i in range(args.costs):
                case_costs(inventory, work / f"costs{i}")
                case_costs(inventory, work / f"settled{i}", ("rodata-survive",), SETTLED)
            return 0
        one_panic_case(inventory, work)
        case_costs(inventory, work)
        case_costs(inventory, work / "settled", ("rodata-survive",), SETTLED)
        timed_playbook(inventory, "playbooks/smoke.yaml", work / "results")
        if args.nightly:
            timed_playbook(inventory, "playbooks/nightly.yaml", work / "results")
    finally:
        if not args.keep_lab:
            lab.lab_down(log=lambda _: None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ncontroller peak RSS: {peak:.0f} MB  [target <= 150 MB]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
