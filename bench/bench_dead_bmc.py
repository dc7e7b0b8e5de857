"""What dead BMCs cost the controller, and whether live consoles slow down meanwhile.

    .venv/bin/python bench/bench_dead_bmc.py [--seconds 40] [--repeat 3] [--dead 0,1,20]

Each measurement runs in a fresh child process (pyghmi keeps its sessions per process): one
live loopback BMC with an open IpmiPower + SolConsole, plus N dead BMCs, each with an open
IpmiPower (polled every second from its own thread, as a host's cycle thread would) and a
SolConsole, both trying to recover. A dead BMC is "frozen" (a loopback BMC SIGSTOPped after
its sessions are up: they time out and re-log in) or "silent" (a UDP port nothing answers:
logins never succeed). A frozen BMC cost most 20-37 s after it froze (its re-login had
spent its retries), hence the 40 s window. Printed per child: controller CPU = process CPU
time / wall time over the window, then, with the dead BMCs still failing, the live BMC's get_power round trip and
SOL line latency (guest print -> line visible to wait_for, as bench_transport.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from orchestrator.transports.ipmi import IpmiPower  # noqa: E402
from orchestrator.transports.sol import SolConsole  # noqa: E402
from orchestrator.config.model import BmcConfig, SecretRef  # noqa: E402
from test_transport_peers import PASSWORD, USER, LoopbackBmc  # noqa: E402
from bench_transport import console_line_ms  # noqa: E402


def pick(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def silent_config(root: Path, port: int) -> BmcConfig:
    root.mkdir(parents=True, exist_ok=True)
    (root / "bmc-password").write_text(PASSWORD)
    return BmcConfig(address="127.0.0.1", port=port, user=USER,
                     password=SecretRef(file=root / "bmc-password"))


class DeadBmc:
    """One dead BMC with an open power session (polled every second) and console."""

    def __init__(self, root: Path, kind: str):
        self.peer, self.hole = None, None
        if kind == "frozen":
            self.peer = LoopbackBmc(root)
            cfg = self.peer.bmc_config()
        else:
            self.hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.hole.bind(("127.0.0.1", 0))            # bound, never read: no answer, no ICMP
            cfg = silent_config(root, self.hole.getsockname()[1])
        self.power = IpmiPower(cfg)
        self.console = SolConsole(cfg, raw_log=root / "console.raw")
        self.stop = threading.Event()
        if self.peer is not None:
            self.power.status()
            assert self.console.wait_until_healthy(30), self.console.last_failure

    def kill(self) -> None:
        if self.peer is not None:
            self.peer.process.send_signal(signal.SIGSTOP)
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                self.power.status()
            except Exception:
                pass                       # RetryableInfraError after pyghmi's retries
            self.stop.wait(1.0)

    def close(self) -> None:
        self.stop.set()
        self.console.close()
        if self.peer is not None:
            self.peer.process.send_signal(signal.SIGCONT)
            self.peer.stop()


def live_latencies(bmc: LoopbackBmc, power: IpmiPower, console: SolConsole, samples: int) -> dict:
    power_ms, sol_ms = [], []
    for n in range(samples):
        started = time.perf_counter()
        power.status()
        power_ms.append((time.perf_counter() - started) * 1000)
        sol_ms.append(console_line_ms(bmc, console, f"live line {n}"))
    return {"power_p50": pick(power_ms, 0.5), "power_p99": pick(power_ms, 0.99),
            "sol_p50": pick(sol_ms, 0.5), "sol_p99": pick(sol_ms, 0.99)}


def child(dead: int, kind: str, seconds: float, samples: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-dead-bmc-"))
    live = LoopbackBmc(root / "live")
    power = IpmiPower(live.bmc_config())
    console = SolConsole(live.bmc_config(), raw_log=root / "live.raw")
    assert console.wait_until_healthy(30), console.last_failure
    power.status()
    deads = [DeadBmc(root / f"dead{i}", kind) for i in range(dead)]
    for each in deads:
        each.kill()
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(seconds)            # the window: the dead BMCs' sessions retry and re-log in
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    result = {"dead": dead, "kind": kind, "cpu_pct": 100 * cpu / wall, "seconds": wall}
    result.update(live_latencies(live, power, console, samples))
    closers = [threading.Thread(target=each.close) for each in deads]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(30)
    console.close()
    power.close()
    live.stop()
    return result


def run_child(dead: int, kind: str, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(dead), "--kind", kind,
                          "--seconds", str(args.seconds), "--samples", str(args.samples)],
                         capture_output=True, text=True, timeout=args.seconds + 300)
    if out.returncode != 0:
        raise RuntimeError(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0,
                        help="CPU window per run, from the moment the BMCs die")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200, help="live latency samples")
    parser.add_argument("--dead", default="0,1,20", help="numbers of dead BMCs to try")
    parser.add_argument("--kinds", default="frozen,silent")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="frozen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.kind, args.seconds, args.samples)), flush=True)
        return
    print(f"{'dead BMCs':<16} {'CPU % of a core, each run':<26} {'per dead BMC':>12}   "
          f"{'live get_power p50/p99 ms':<27} live SOL line p50/p99 ms")
    baseline = None
    for dead in [int(n) for n in args.dead.split(",")]:
        for kind in (["none"] if dead == 0 else args.kinds.split(",")):
            runs = [run_child(dead, kind, args) for _ in range(args.repeat)]
            cpu = statistics.median(r["cpu_pct"] for r in runs)
            if dead == 0:
                baseline = cpu
            per = f"{(cpu - (baseline or 0)) / dead:6.2f} %" if dead else ""
            print(f"{dead:>3} {kind:<12} {fmt(runs, 'cpu_pct', None, '5.1f'):<26} {per:>12}   "
                  f"{fmt(runs, 'power_p50', 'power_p99', '.2f'):<27} "
                  f"{fmt(runs, 'sol_p50', 'sol_p99', '.2f')}", flush=True)
    print("per dead BMC = (median CPU - median CPU with no dead BMC) / dead BMCs")


def fmt(runs: list[dict], first: str, second: str | None, spec: str) -> str:
    parts = []
    for r in runs:
        text = format(r[first], spec)
        parts.append(text if second is None else f"{text}/{format(r[second], spec)}")
    return " ".join(parts)

if __name__ == "__main__":
    main()
