"""One controller driving a fleet of simulated hosts, and resuming a big run folder.

Each simulated host (tests/fakehost.py) answers SSH commands after 5 ms and BMC calls after
2 ms (the lab's measured round trips), and comes back 12 s after it panics (the lab's
panic -> kdump -> SSH). Every host runs one panic case through the real runner: lease,
arm journal, cycle, results. Printed: wall time against the slowest host's own time (target
within 5 %), controller CPU (target <= 1 core) and peak RSS (target <= 2 GiB); then the
time to reload a run folder of that many finished cases, as ``run --resume`` does (target
<= 2 s for 1,000).

    .venv/bin/python bench/bench_fleet.py [--hosts 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from orchestrator.config.model import Inventory  # noqa: E402
from orchestrator.config.playbook import Playbook  # noqa: E402
from orchestrator.fleet.host_handles import CommandLog, HostSession  # noqa: E402
from orchestrator.fleet.plan import RunPlan  # noqa: E402
from orchestrator.fleet.run_folder import RunFolder  # noqa: E402
from orchestrator.fleet.runner import Runner  # noqa: E402
from orchestrator.transports.fake import FakePower, FakeShell  # noqa: E402
from fakehost import FakeLabHost, install_kernel_stubs  # noqa: E402
from test_cycle import make_case  # noqa: E402

SSH_COMMAND_S, BMC_CALL_S, PANIC_TO_BACK_S = 0.005, 0.002, 12.0
SYSCTLS = {"vm.panic_on_unrecoverable_memory_failure": "0", "kernel.panic": "0"}    # each host's own


class SlowPower(FakePower):
    """The lab BMC's measured round trip on every call."""

    def _act(self, action: str) -> None:
        time.sleep(BMC_CALL_S)
        super()._act(action)

    def status(self) -> str:
        time.sleep(BMC_CALL_S)
        return super().status()


def simulated_fleet(count: int) -> dict[str, FakeLabHost]:
    hosts = {}
    for i in range(count):
        host = FakeLabHost(command_s=SSH_COMMAND_S, reboot_after_s=PANIC_TO_BACK_S, sysctls=dict(SYSCTLS))
        host.power = SlowPower(on_action=host._power_action)
        hosts[f"sim{i:04d}"] = host
    return hosts


def remote_lease_shell() -> FakeShell:
    """The lease's commands cost one SSH round trip, as on a real host (the unit tests run the
    real scripts; here forking a local sh per call would measure the simulator, not us)."""
    return FakeShell(lambda command: (0, ""), round_trip_s=SSH_COMMAND_S)


class SimulatorCpu:
    """CPU time the simulated hosts' own Python takes in this process (answering commands,
    their fake kernels, their BMCs): a real host spends it on its own CPU, not the
    controller's. Counted per outermost call, on the calling thread's clock."""

    CALLS = ((FakeShell, "run"), (FakeShell, "fire_detached"), (SlowPower, "_act"), (SlowPower, "status"))

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock, self._depth = threading.Lock(), threading.local()

    @contextmanager
    def counting(self):
        real = {(cls, name): getattr(cls, name) for cls, name in self.CALLS}
        for (cls, name), call in real.items():
            setattr(cls, name, self._timed(call))
        try:
            yield self
        finally:
            for (cls, name), call in real.items():
                setattr(cls, name, call)

    def _timed(self, call):
        def timed(*args, **kwargs):
            depth = getattr(self._depth, "n", 0)
            self._depth.n, t0 = depth + 1, time.thread_time()
            try:
                return call(*args, **kwargs)
            finally:
                self._depth.n = depth
                if depth == 0:
                    spent = time.thread_time() - t0
                    with self._lock:
                        self.seconds += spent
        return timed


def opener(fleet: dict[str, FakeLabHost]):
    @contextmanager
    def open_host(h, host_dir, *, commands_log=None):
        fake = fleet[h.name]
        handles = dataclasses.replace(fake.handles(), host=h)
        yield HostSession(handles=handles, commands=CommandLog(commands_log), lease_shell=remote_lease_shell())
    return open_host


def run_fleet(count: int, work: Path):
    """One panic case on each of ``count`` simulated hosts: (runner, run, wall, (cpu, of
    which the simulator's), (last case started, last injection), final reports' seconds)."""
    from orchestrator.fleet import host_run

    fleet = simulated_fleet(count)
    template = next(iter(fleet.values())).handles().host
    hosts = tuple(dataclasses.replace(template, name=name, state_dir=fake.state_dir) for name, fake in fleet.items())
    case = make_case(name="rodata-panic", deadlines={**make_case().deadlines, "dump": 60.0, "panic": 10.0})
    plan = RunPlan(inventory=Inventory(path=work / "fleet.yaml", hosts=hosts, digest="sim"),
                   playbook=Playbook(path=work / "bench.yaml", name="bench", cases=(case,), digest="sim"))
    injected: list[float] = []
    runner = Runner(RunFolder.create(work / "results", plan), open_host=opener(fleet),
                    on_state=lambda host, case, state: injected.append(time.monotonic()) if state == "injected" else None)
    starts, real_one_case = [], host_run.HostRun._one_case

    def one_case(self, case):
        starts.append(time.monotonic())
        return real_one_case(self, case)

    host_run.HostRun._one_case = one_case
    try:
        with SimulatorCpu().counting() as simulator:
            wall0, cpu0 = time.monotonic(), time.process_time()
            run = runner.run()
            wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    finally:
        host_run.HostRun._one_case = real_one_case
    t0 = time.monotonic()
    runner.folder.assemble()        # what the run's last step cost
    return runner, run, wall, (cpu, simulator.seconds), (max(starts) - wall0, max(injected) - wall0), time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    args = parser.parse_args()
    install_kernel_stubs(setattr, dict(SYSCTLS))
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    alone = run_fleet(1, work / "alone")[2]
    runner, run, wall, cpu, last, reports = run_fleet(args.hosts, work / "fleet")
    slowest = max(c.seconds for c in run.cases)
    verdicts = {v: n for v, n in run.verdict_counts().items() if n}
    print(f"{args.hosts} simulated hosts, one panic case each: {verdicts}")
    print(f"  wall {wall:.1f} s; slowest host's own case {slowest:.1f} s: wall is {100 * (wall / slowest - 1):+.1f} % "
          f"of it  [target within 5 %]")
    print(f"  one host alone, same simulator: wall {alone:.1f} s; the fleet's wall is {100 * (wall / alone - 1):+.1f} % "
          f"of it (the GIL shares one core's worth of Python among all hosts)")
    started, injected = last
    print(f"  last case started {started:.1f} s into the run, last injection {injected:.1f} s; the final reports "
          f"took {reports:.2f} s")
    print(f"  floor: no host is back before its injection + {PANIC_TO_BACK_S:.0f} s, and the last injection came "
          f"{injected:.1f} s in ({1000 * injected / args.hosts:.1f} ms per host: with many hosts, their steps before "
          f"the injection queue for one core): the wall cannot be under {injected + PANIC_TO_BACK_S:.1f} s, "
          f"{100 * ((injected + PANIC_TO_BACK_S) / alone - 1):+.1f} % of one host alone")
    cpu, simulated = cpu
    print(f"  controller CPU {cpu:.1f} s = {cpu / wall:.2f} cores on average, {1000 * cpu / args.hosts:.1f} ms per host "
          f"(the simulated hosts' own included)  [target <= 1 core]")
    print(f"    of which the simulated hosts' own Python (answering, their kernels and BMCs): {simulated:.1f} s; "
          f"the orchestrator's: {cpu - simulated:.1f} s = {(cpu - simulated) / wall:.2f} cores")
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB  [target <= 2048 MB]")
    t0 = time.monotonic()
    folder = RunFolder(runner.run_dir, runner.folder.run_id, runner.folder.started_at, runner.folder.plan)
    folder.reload()
    left = [pair for pair in runner.folder.plan.pairs() if pair not in folder.finished()]
    reload_s = time.monotonic() - t0
    print(f"  resume: reloading {len(folder.finished())} finished cases took {reload_s:.2f} s "
          f"({len(left)} left to run)  [target <= 2 s for 1,000]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
