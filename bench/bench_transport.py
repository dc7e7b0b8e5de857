"""Transport latencies against loopback peers (a BMC subprocess, and sshd if installed).

    .venv/bin/python bench/bench_transport.py [--samples N]

Prints: get_power round trip, SSH command round trip (and the controller CPU a command and a
new connection cost), SOL console line latency (guest print -> line visible to wait_for),
dead-console detection and recovery after a BMC kill, and the controller's CPU while a BMC
is frozen (SIGSTOP) under an open console and power session.
"""

from __future__ import annotations

import argparse
import re
import signal
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from orchestrator.transports.ipmi import IpmiPower  # noqa: E402
from orchestrator.transports.sol import SolConsole  # noqa: E402
from orchestrator.transports.ssh import FabricShell  # noqa: E402
from test_transport_peers import LoopbackBmc  # noqa: E402


def timed_ms(action) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def report(name: str, samples_ms: list[float]) -> None:
    ordered = sorted(samples_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    print(f"{name:<28} n={len(ordered):<4} p50 {pick(0.5):8.2f} ms   p99 {pick(0.99):8.2f} ms"
          f"   max {ordered[-1]:8.2f} ms")


def bench_power(bmc: LoopbackBmc, samples: int) -> None:
    power = IpmiPower(bmc.bmc_config())
    power.status()                                   # login outside the measurement
    report("get_power round trip", [timed_ms(power.status) for _ in range(samples)])
    power.close()


def console_line_ms(bmc: LoopbackBmc, console: SolConsole, text: str) -> float:
    """The guest prints ``text``: milliseconds until the console transcript has the line."""
    since = console.mark()
    printed = time.monotonic()
    bmc.guest.say(f"{text}\n")
    line = console.wait_for(re.compile(f"{re.escape(text)}$"), since=since, timeout=5)
    assert line is not None, f"{text!r} lost"
    return (line.t - printed) * 1000


def bench_console_lines(bmc: LoopbackBmc, console: SolConsole, samples: int) -> None:
    report("SOL line latency", [console_line_ms(bmc, console, f"bench line {n}") for n in range(samples)])


def bench_dead_console(bmc: LoopbackBmc, console: SolConsole, down_seconds: float) -> None:
    killed = time.monotonic()
    bmc.kill()
    while console.healthy():
        time.sleep(0.005)
    noticed = time.monotonic() - killed
    time.sleep(down_seconds)
    restarted = time.monotonic()
    bmc.start()
    back = console.wait_until_healthy(120)
    print(f"{'dead console noticed after':<28} {noticed:6.2f} s   (BMC killed, probe every "
          f"{console.probe_interval:g} s, dead after {console.dead_after:g} s)")
    print(f"{'console back after restart':<28} {time.monotonic() - restarted:6.2f} s   "
          f"(BMC down {down_seconds:g} s; recovered={back}; cause: {console.last_failure})")


def bench_frozen_bmc(bmc: LoopbackBmc, console: SolConsole, frozen_seconds: float) -> None:
    """CPU this process burns while one BMC answers nothing (a rack's dead BMC)."""
    power = IpmiPower(bmc.bmc_config())
    power.status()
    assert console.wait_until_healthy(60), console.last_failure
    bmc.process.send_signal(signal.SIGSTOP)
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(frozen_seconds)   # the measurement window: CPU used while the BMC is frozen
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    bmc.process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    back = console.wait_until_healthy(60)
    print(f"{'CPU while a BMC is frozen':<28} {100 * cpu / wall:6.1f} % of a core over {wall:.0f} s "
          f"(console + power session open)")
    print(f"{'console back after resume':<28} {time.monotonic() - resumed:6.2f} s   (recovered={back})")
    power.close()


def bench_ssh(samples: int, root: Path) -> None:
    if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists():
        print("SSH round trip               skipped: openssh-server not installed")
        return
    from test_transport_ssh import LoopbackSshd
    sshd = LoopbackSshd(root / "sshd")
    shell = FabricShell(sshd.config())
    report("SSH connect + first command", [timed_ms(lambda: shell.run("true", timeout=10))])
    report("SSH command round trip", [timed_ms(lambda: shell.run("true", timeout=10))
                                      for _ in range(samples)])
    bench_ssh_cpu(shell, samples)
    started = time.perf_counter()
    shell.fire_detached("sleep 5", timeout=10, output=str(root / "detached"))
    print(f"{'fire_detached returns after':<28} {(time.perf_counter() - started) * 1000:8.2f} ms")
    shell.close()
    sshd.stop()


def bench_ssh_cpu(shell: FabricShell, samples: int) -> None:
    """What the controller's own CPU pays per command and per connection (process time: the
    transport's reader threads included): the real transport's share of a fleet's CPU, which
    the simulated hosts of bench_fleet.py do not charge."""
    def cpu_ms(action, n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            action()
        return (time.process_time() - started) * 1000 / n

    def connect_and_run() -> None:
        fresh = shell.fresh()
        fresh.run("true", timeout=10)
        fresh.close()
    command = cpu_ms(lambda: shell.run("true", timeout=10), samples)
    connection = cpu_ms(connect_and_run, max(5, samples // 10)) - command
    print(f"{'controller CPU per command':<28} {command:8.2f} ms   per new connection {connection:8.2f} ms more")
    print(f"{'':<28} one core then opens at most {1000 / (connection + command):.0f} hosts a second, "
          f"or runs {1000 / command:.0f} commands a second, whatever the orchestrator does around them")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--down", type=float, default=2.0, help="seconds the BMC stays dead")
    parser.add_argument("--frozen", type=float, default=20.0, help="seconds the BMC stays frozen")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-transport-"))
    bmc = LoopbackBmc(root / "m1")
    try:
        bench_power(bmc, args.samples)
        console = SolConsole(bmc.bmc_config(), raw_log=root / "console.raw")
        assert console.wait_until_healthy(20), console.last_failure
        bench_console_lines(bmc, console, args.samples)
        bench_dead_console(bmc, console, args.down)
        bench_frozen_bmc(bmc, console, args.frozen)
        console.close()
    finally:
        bmc.stop()
    bench_ssh(min(args.samples, 100), root)


if __name__ == "__main__":
    main()
