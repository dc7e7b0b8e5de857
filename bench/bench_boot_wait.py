"""What waiting costs the controller: many hosts at once waiting for a reboot that does not
come, each probed by the real wait_for_boot, with and without the shared probe budget
(cycle/probe_pace.py).

Each simulated host refuses every probe after SSH_COMMAND_S (a down host that answers at
once: the costliest case for the controller). Printed per run: probes a host got per
second, and the controller's CPU (user + system, the simulated refusals included).

    .venv/bin/python bench/bench_boot_wait.py [--hosts 1000] [--seconds 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from orchestrator.cycle.hostwait import wait_for_boot  # noqa: E402
from orchestrator.cycle.probe_pace import ProbePace  # noqa: E402
from orchestrator.errors import DeadlineExceeded  # noqa: E402
from orchestrator.transports.fake import FakeShell  # noqa: E402

SSH_COMMAND_S = 0.005


def waiting(hosts: int, seconds: float, pace: ProbePace) -> tuple[float, float, float]:
    """(wall, probes per host per second, CPU seconds) for ``hosts`` waiting ``seconds``."""
    shells = [FakeShell(lambda command: (0, ""), reachable=lambda: False, round_trip_s=SSH_COMMAND_S)
              for _ in range(hosts)]

    def wait(shell: FakeShell) -> None:
        try:
            wait_for_boot(shell, deadline_s=seconds, state="dump", not_boot_id="old", pace=pace)
        except DeadlineExceeded:
            pass
    threads = [threading.Thread(target=wait, args=(shell,)) for shell in shells]
    t0, cpu0 = time.monotonic(), os.times()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.monotonic() - t0, os.times()
    probes = sum(len(shell.commands) for shell in shells)
    return wall, probes / hosts / wall, (cpu.user - cpu0.user) + (cpu.system - cpu0.system)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    unbounded = ProbePace(per_second=float("inf"))
    for name, pace in (("no budget", unbounded), ("shared budget", ProbePace())):
        wall, rate, cpu = waiting(args.hosts, args.seconds, pace)
        print(f"{args.hosts} hosts waiting, {name}: {rate:.1f} probes per host per second, controller "
              f"{cpu / wall:.2f} cores, {1000 * cpu / (rate * wall * args.hosts):.2f} ms per probe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
