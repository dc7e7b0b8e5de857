"""Lab BMC latency: ``power status`` round trip and SOL added latency per console line.

    .venv/bin/python bench/bench_vlab_bmc.py [--calls 200] [--lines 100]

Brings up a private one-machine lab (its own ORCH_LAB_DIR, so a running lab is untouched),
with the BMC tracing when it reads each console byte from serial.sock
(ORCH_VLAB_SOL_TRACE). SOL added latency = time the pyghmi SOL client receives the end of
a line - time the BMC read that byte (both CLOCK_MONOTONIC, shared across processes).
Targets: power status p50/p99 <= 10 ms; SOL added latency <= 5 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f'p50 {statistics.median(ordered) * 1000:.2f} ms  p99 {p99 * 1000:.2f} ms  '
            f'max {ordered[-1] * 1000:.2f} ms  (n={len(ordered)})')


def bench_power_status(power, calls: int) -> list[float]:
    power.status()  # warm: session established
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        assert power.status() == 'on'
        times.append(time.perf_counter() - started)
    return times


def bench_sol_lines(machine, password: bytes, lines: int) -> list[float]:
    from pyghmi.ipmi.console import Console
    from pyghmi.ipmi.private.session import Session
    machine_dir = Path(machine.machine_dir)
    console_log, trace = machine_dir / 'console.log', machine_dir / 'sol-trace.log'
    received: list[tuple[float, int]] = []  # (monotonic, cumulative bytes received)
    stream = bytearray()

    def on_data(data):
        if not isinstance(data, dict):
            stream.extend(data)
            received.append((time.monotonic(), len(stream)))

    console = Console(bmc='127.0.0.1', port=machine.bmc_port, userid=b'admin',
                      password=password, iohandler=on_data, force=True)
    stop = threading.Event()
    threading.Thread(target=lambda: [Session.wait_for_rsp(0.05) for _ in iter(stop.is_set, True)],
                     daemon=True).start()
    try:
        deadline = time.monotonic() + 15
        while not console.activated and time.monotonic() < deadline:
            time.sleep(0.01)
        start_offset = console_log.stat().st_size
        # paced: one line per read, the per-line latency rather than a burst's queueing
        console.send_data(b'\rfor i in $(seq 1 %d); do echo BENCH-$i-END; usleep 20000; done\r' % lines)
        marker = b'BENCH-%d-END\r\n' % lines
        deadline = time.monotonic() + 120
        while marker not in stream and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # let the trace file catch up with the last read
    finally:
        stop.set()
        console.close()
    log_bytes = console_log.read_bytes()
    reads = [(float(t), int(end)) for t, end in (ln.split() for ln in trace.read_text().splitlines())]
    delays = []
    for index in range(1, lines + 1):
        marker = b'BENCH-%d-END\r\n' % index
        log_end = log_bytes.index(marker, start_offset) + len(marker)
        read_at = next(t for t, end in reads if end >= log_end)
        sol_end = stream.index(marker) + len(marker)
        got_at = next(t for t, total in received if total >= sol_end)
        delays.append(got_at - read_at)
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--calls', type=int, default=200)
    parser.add_argument('--lines', type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix='bench-vlab-') as tmp:
        os.environ.update(ORCH_LAB_DIR=f'{tmp}/lab', ORCH_VIRTUAL_INVENTORY=f'{tmp}/v.yaml',
                          ORCH_VLAB_SOL_TRACE='1')
        from orchestrator.vlab.lab import lifecycle as lab
        machine, = lab.lab_up(log=lambda line: print(f'  lab: {line}'))
        try:
            power = bench_power_status(lab.machine_power(machine, lab.lab_paths()), args.calls)
            print(f'BMC power status round trip (IpmiPower over pyghmi): {percentiles(power)}')
            sol = bench_sol_lines(machine, lab._password(lab.lab_paths()), args.lines)
            print(f'SOL added latency per console line (BMC read -> client): {percentiles(sol)}')
        finally:
            lab.lab_down(log=lambda line: print(f'  lab: {line}'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
