"""Triage throughput: thousands of ~50 KB kdump dmesg files, and one 100 MB console log.

    .venv/bin/python bench/bench_triage.py [--files 5000] [--big-mb 100] [--keep DIR]

Logs are generated into a temporary folder: boot noise typical of a server dmesg, a few
non-fatal warnings with call traces and recovered memory failures, then one crash taken
from the fixtures in tests/fixtures/logs (every bucket, x86 and arm64), with shifted
timestamps, pids and pfns. Triage runs in this process, on one core (pinned when the OS
allows), writing JSON lines to /dev/null. Prints files/s, MB/s and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from orchestrator.triage.pipeline import triage_paths  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "logs"
TARGET_FILES_PER_S = 2000

NOISE = [
    "ACPI: PCI Interrupt Link [LNKA] (IRQs 5 *10 11)",
    "pci 0000:00:1f.2: [8086:2922] type 00 class 0x010601 conventional PCI endpoint",
    "pci 0000:3b:00.0: BAR 0 [mem 0xb8000000-0xb80fffff 64bit pref]: assigned",
    "usb 1-1: new high-speed USB device number 2 using xhci_hcd",
    "usb 1-1: New USB device found, idVendor=0bda, idProduct=5411, bcdDevice= 1.36",
    "EXT4-fs (nvme0n1p2): mounted filesystem 9c1e3a4b r/w with ordered data mode. Quota mode: none.",
    "systemd[1]: Started systemd-journald.service - Journal Service.",
    "systemd[1]: Mounting sys-kernel-debug.mount - Kernel Debug File System...",
    "audit: type=1400 audit(1795628242.123:42): apparmor=\"STATUS\" operation=\"profile_load\" name=\"nvidia_modprobe\" pid=712",
    "e1000e 0000:00:1f.6 eno1: NIC Link is Up 1000 Mbps Full Duplex, Flow Control: Rx/Tx",
    "nvme nvme0: 64/0/0 default/read/poll queues",
    "random: crng init done",
    "Memory: 394211208K/401408056K available (16384K kernel code, 2662K rwdata, 11260K rodata, 4120K init)",
    "smpboot: CPU 37 is now offline",
    "IPv6: ADDRCONF(NETDEV_CHANGE): eno1: link becomes ready",
    "br0: port 2(veth3f2a1c9) entered forwarding state",
    "TCP: request_sock_TCP: Possible SYN flooding on port 443. Sending cookies.",
    "xfs filesystem being remounted at /var/lib/docker supports timestamps until 2038-01-19 (0x7fffffff)",
    "EDAC skx: ECC is enabled.",
    "mlx5_core 0000:5e:00.0: firmware version: 16.35.2000",
    "perf: interrupt took too long (2504 > 2500), lowering kernel.perf_event_max_sample_rate to 79800",
    "hrtimer: interrupt took 18420 ns",
    "kauditd_printk_skb: 14 callbacks suppressed",
    "device-mapper: uevent: version 1.0.3",
    "Bluetooth: Core ver 2.22",
    "clocksource: Switched to clocksource tsc",
    "NET: Registered PF_INET6 protocol family",
    "ipmi_si IPI0001:00: IPMI kcs interface initialized",
    "cgroup: Unknown subsys name 'net_prio'",
    "sd 0:0:0:0: [sda] 1953525168 512-byte logical blocks: (1.00 TB/932 GiB)",
]
WARNING = """WARNING: CPU: 3 PID: 1211 at net/core/dev.c:8912 netdev_rx_csum_fault+0x3b/0x50
Modules linked in: nvme e1000e
CPU: 3 UID: 0 PID: 1211 Comm: irq/45-eno1 Not tainted 7.3.4+deb13-amd64 #1
RIP: 0010:netdev_rx_csum_fault+0x3b/0x50
Call Trace:
 <IRQ>
 __skb_checksum_complete+0xd0/0xe0
 tcp_v4_rcv+0x6f2/0xe80
 ip_protocol_deliver_rcu+0x32/0x180
 </IRQ>
---[ end trace 0000000000000000 ]---""".splitlines()
RECOVERED = ["Memory failure: {pfn}: recovery action for free buddy page: Recovered",
             "Memory failure: {pfn}: recovery action for dirty LRU page: Recovered"]
_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


def crash_blocks() -> list[list[str]]:
    """The crash part of every fixture: from a little before its first hardware/MF/oops line."""
    blocks = []
    for path in sorted(FIXTURES.rglob("*")):
        if not path.is_file() or "vmcore" == path.name:
            continue
        lines = path.read_text(errors="replace").splitlines()
        first = next((i for i, l in enumerate(lines)
                      if re.search(r"Hardware Error|Memory failure|Injecting|BUG:|sysrq:|Kernel panic", l)), None)
        if first is not None:
            blocks.append(lines[first:first + 80])
    return blocks


def _restamp(line: str, base: float, rng: random.Random, pfn_shift: int) -> str:
    line = re.sub(r"PID: \d+", f"PID: {rng.randint(100, 99999)}", line)
    line = re.sub(r"0x(3883|42c0|1be1|12c4|4023)(\w)", lambda m: hex(int(m[1] + m[2], 16) + pfn_shift), line)
    m = _STAMP.match(line)
    if m:
        line = "[%12.6f]" % (base + float(m[1]) % 100) + line[m.end():]
    return line


def synthetic_log(rng: random.Random, blocks: list[list[str]], size: int, with_crash: bool = True) -> str:
    out, t, length = [], 0.0, 0
    banner = "[    0.000000] Linux version 7.3.4+deb13-amd64 (debian-kernel@lists.debian.org) (gcc-14) #1 SMP Debian"
    out.append(banner)
    while length < size:
        t += rng.random() * 0.5
        roll = rng.random()
        if roll < 0.002:
            lines = WARNING
        elif roll < 0.004:
            lines = [rng.choice(RECOVERED).format(pfn=hex(rng.randint(0x10000, 0x3fffff)))]
        else:
            lines = [rng.choice(NOISE)]
        for text in lines:
            out.append("[%12.6f] %s" % (t, text))
            length += len(out[-1]) + 1
    if with_crash:
        block = rng.choice(blocks)
        out.extend(_restamp(l, t + 10, rng, rng.randint(1, 4096) << 4) for l in block)
    return "\n".join(out) + "\n"


def generate(folder: Path, files: int, big_mb: int, rng: random.Random) -> tuple[list[Path], Path]:
    blocks = crash_blocks()
    paths = []
    for i in range(files):
        host = folder / "fleet" / f"host{i // 10:04d}" / f"2026112{i % 10}1737"
        host.mkdir(parents=True, exist_ok=True)
        path = host / f"dmesg.2026112{i % 10}1737"
        path.write_text(synthetic_log(rng, blocks, 50_000 - 4000))
        paths.append(path)
    big = folder / "big-console.log"
    with open(big, "w") as stream:
        written = 0
        while written < big_mb * 1_000_000:
            text = synthetic_log(rng, blocks, 1_000_000, with_crash=rng.random() < 0.3)
            stream.write(text)
            written += len(text)
    return paths, big


def measure(paths: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one triage run. CPU time is what one core spent, whatever else
    the host runs (the lab's QEMU guests share it)."""
    with open(os.devnull, "w") as sink:
        wall, cpu = time.perf_counter(), time.process_time()
        status = triage_paths(paths, jsonl=True, out=sink)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert status == 0, status
    return wall, cpu


def report(label: str, count: int, size: int, wall: float, cpu: float) -> float:
    print(f"{label}: {count} file(s), {size / 1e6:.0f} MB: wall {wall:.2f} s, CPU {cpu:.2f} s -> "
          f"{count / cpu:,.0f} files/s, {size / 1e6 / cpu:.0f} MB/s per CPU second "
          f"({count / wall:,.0f} files/s wall)")
    return count / cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="directory runs; the best one counts")
    parser.add_argument("--keep", help="generate into this folder and keep it")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench-triage-"))
    try:
        t0 = time.perf_counter()
        paths, big = generate(folder, args.files, args.big_mb, random.Random(7))
        print(f"generated {len(paths)} files + {big.stat().st_size / 1e6:.0f} MB log in {time.perf_counter() - t0:.1f} s")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sizes = sum(p.stat().st_size for p in paths)
        best = max(report("directory", len(paths), sizes, *measure([str(folder / "fleet")]))
                   for _ in range(args.repeat))
        report("big log", 1, big.stat().st_size, *measure([str(big)]))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"peak RSS {rss / 1024:.0f} MB (after generating, before triage: {rss_before / 1024:.0f} MB)")
        print(f"best directory rate {best:,.0f} files/s per CPU second (target >= {TARGET_FILES_PER_S})")
        return 0 if best >= TARGET_FILES_PER_S else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
