"""Virtual lab timings: image build (cold and cached), boot -> SSH, panic -> dump -> SSH, RSS.

    .venv/bin/python bench/bench_vlab_boot.py [--arch x86_64 --arch aarch64] [--boots 5] [--kdumps 5] [--no-cold]
                                              [--kernel backports|bookworm|generic] [--memory-mb 768]

One guest at a time. "Cold" builds use a fresh, temporary cache dir (apt update and
downloads included); everything else uses the normal cache. Targets (2-core TCG host):
boot->SSH <= 8 s x86_64 / 9 s aarch64 (median), panic->dump->SSH <= 25 s, cached build
<= 5 s, <= 700 MB RSS per machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import tunables  # noqa: E402
from orchestrator.vlab.image import build as image  # noqa: E402
from orchestrator.vlab.image.kernels import KERNEL_FLAVOURS  # noqa: E402
from orchestrator.vlab.qemu.machine import MachineSpec, QemuMachine, create_disk, ensure_host_key, known_hosts_line  # noqa: E402
from orchestrator.vlab.qemu.serial_tap import SerialTap  # noqa: E402

SSH_DEADLINE_S = 90.0


class BenchGuest:
    def __init__(self, arch: str, work: Path, port: int, kernel: str, memory_mb: int, tcg_cache_mb: int | None,
                 tcg_thread: str):
        self.manifest = image.build_image(arch, kernel, log=lambda _m: None)
        machine_dir = work / arch
        self.key = work / "id_ed25519"
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        host_key = ensure_host_key(machine_dir)
        create_disk(machine_dir, host_key, Path(f"{self.key}.pub"))
        self.known_hosts = work / f"known_hosts-{arch}"
        self.known_hosts.write_text(known_hosts_line(host_key, "127.0.0.1", port) + "\n")
        self.machine = QemuMachine(MachineSpec(name=f"bench-{arch}", arch=arch, machine_dir=machine_dir,
                                               image=self.manifest, ssh_port=port, memory_mb=memory_mb,
                                               tcg_cache_mb=tcg_cache_mb, tcg_thread=tcg_thread))

    def ssh(self, command: str, timeout: float = 10.0, connect_timeout: int = 3) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-n", "-i", str(self.key), "-p", str(self.machine.spec.ssh_port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}", "-o", "ServerAliveInterval=2",
                "root@127.0.0.1", command]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 255, "", "timeout")

    def wait_ssh(self, started: float, not_boot_id: str = "") -> float:
        """Seconds from ``started`` until an SSH command succeeds (on a new boot, if asked)."""
        while time.monotonic() - started < SSH_DEADLINE_S:
            # slirp accepts the TCP connection at once and forwards the SYN to the guest; one
            # sent before the guest's network is up is only retried after slirp's 3 s RTO, so
            # a pending attempt is abandoned after 1 s rather than waited for
            result = self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=5, connect_timeout=1)
            if result.returncode == 0 and result.stdout.strip() != not_boot_id:
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"no SSH within {SSH_DEADLINE_S:.0f} s")

    def idle_cpu_percent(self, seconds: float = 15.0) -> float:
        """QEMU's CPU use (user+sys, % of one host core) while the guest sits idle."""
        def ticks() -> int:
            fields = Path(f"/proc/{self.machine.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        before, started = ticks(), time.monotonic()
        time.sleep(seconds)   # the measurement window itself, not a wait for an event
        used = (ticks() - before) / os.sysconf("SC_CLK_TCK")
        return 100 * used / (time.monotonic() - started)

    def guest_ram_rss_mb(self) -> float:
        """The part of the RSS that is guest RAM (the one mapping of exactly its size)."""
        size_kb, rss, current = self.machine.spec.memory_mb * 1024, 0, None
        for line in Path(f"/proc/{self.machine.pid}/smaps").read_text().splitlines():
            if line.startswith("Size:"):
                current = int(line.split()[1])
            elif line.startswith("Rss:") and current == size_kb:
                rss += int(line.split()[1])
        return rss / 1024

    def rss_mb(self) -> float:
        pid = self.machine.pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def bench_boots(guest: BenchGuest, boots: int) -> dict[str, float]:
    to_ssh, to_ready, rss = [], [], []
    for _ in range(boots):
        started = time.monotonic()
        guest.machine.start()
        tap = SerialTap(guest.machine.serial_socket)
        try:
            to_ssh.append(guest.wait_ssh(started))
            to_ready.append(tap.wait_for("VLAB: ready", 0, SSH_DEADLINE_S) - started)
            rss.append(guest.rss_mb())
        finally:
            tap.close()
            guest.machine.stop()
    return {"boot_to_ssh_median": statistics.median(to_ssh), "boot_to_ssh_min": min(to_ssh),
            "boot_to_ssh_max": max(to_ssh), "boot_to_ready_median": statistics.median(to_ready),
            "rss_mb_max": max(rss)}


def bench_kdump(guest: BenchGuest, cycles: int) -> dict[str, float]:
    """Timings of the first panic -> dump -> SSH cycle; RSS after each of ``cycles`` (a long
    run's growth is what a 700 MB budget is about, not one cycle's)."""
    guest.machine.start()
    tap = SerialTap(guest.machine.serial_socket)   # follows the cold reboots to new QEMUs
    rss_after: list[float] = []
    timings: dict[str, float] = {}
    try:
        tap.wait_for("VLAB: ready", 0, SSH_DEADLINE_S)
        timings["idle_cpu_percent"] = guest.idle_cpu_percent()
        for _ in range(cycles):
            boot_id = guest.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
            since = tap.mark()
            fired = time.monotonic()
            guest.ssh("nohup setsid sh -c 'echo c > /proc/sysrq-trigger' </dev/null >/dev/null 2>&1 &")
            panic = tap.wait_for("sysrq triggered crash", since, 30)
            crash_up = tap.wait_for("VLAB: crash kernel up", since, 60)
            saved = tap.wait_for("VLAB: dump saved", since, 120)
            back = guest.wait_ssh(panic, not_boot_id=boot_id)
            ready = tap.wait_for("VLAB: ready", since, SSH_DEADLINE_S)
            rss_after.append(guest.rss_mb())
            if len(rss_after) == 1:
                timings.update({"fire_to_panic": panic - fired, "panic_to_crash_kernel": crash_up - panic,
                                "panic_to_dump_saved": saved - panic, "panic_to_ssh": back,
                                "panic_to_ready": ready - panic,
                                "guest_ram_rss_mb_after_kdump": guest.guest_ram_rss_mb()})
    finally:
        tap.close()
        guest.machine.stop()
    return {**timings, "rss_mb_after_kdump": rss_after[0], "rss_mb_after_kdumps_max": max(rss_after),
            "kdump_cycles": float(len(rss_after))}


def bench_builds(arch: str, kernel: str, cold: bool) -> dict[str, float]:
    result = {}
    if cold:
        with tempfile.TemporaryDirectory(prefix="vlab-cold-") as tmp:
            env_before = os.environ.get("ORCH_CACHE_DIR")
            os.environ["ORCH_CACHE_DIR"] = tmp
            try:
                t = time.monotonic()
                image.build_image(arch, kernel, log=lambda _m: None)
                result["cold_build_s"] = time.monotonic() - t
            finally:
                if env_before is None:
                    os.environ.pop("ORCH_CACHE_DIR")
                else:
                    os.environ["ORCH_CACHE_DIR"] = env_before
    image.build_image(arch, kernel, log=lambda _m: None)   # make sure the real cache is warm
    t = time.monotonic()
    image.build_image(arch, kernel, log=lambda _m: None)
    result["cached_build_s"] = time.monotonic() - t
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=["x86_64", "aarch64"])
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--kdumps", type=int, default=5, help="panic -> dump -> reboot cycles (RSS growth)")
    parser.add_argument("--kernel", default="backports", choices=list(KERNEL_FLAVOURS))
    # defaults: what `orchestrator lab up` gives its machines
    parser.add_argument("--memory-mb", type=int, default=tunables.LAB_MEMORY_MB, help="guest RAM")
    parser.add_argument("--tcg-cache-mb", type=int, default=tunables.LAB_TCG_CACHE_MB, help="TCG translation cache cap (MiB)")
    parser.add_argument("--tcg-thread", default=tunables.LAB_TCG_THREAD, choices=["single", "multi"])
    parser.add_argument("--no-cold", action="store_true", help="skip the cold build (no downloads)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlab-bench-"))
    try:
        for port, arch in enumerate(args.arch or ["x86_64", "aarch64"], start=40700):
            figures = bench_builds(arch, args.kernel, cold=not args.no_cold)
            guest = BenchGuest(arch, work, port, args.kernel, args.memory_mb, args.tcg_cache_mb, args.tcg_thread)
            figures |= bench_boots(guest, args.boots)
            figures |= bench_kdump(guest, args.kdumps)
            print(f"{arch} ({guest.manifest.kernel_release}, {args.memory_mb} MB, TCG thread={args.tcg_thread} "
                  f"tb-size={args.tcg_cache_mb or 'default'}, {os.cpu_count()} host cores, "
                  f"load {os.getloadavg()[0]:.1f})")
            for name, value in figures.items():
                print(f"  {name:24s} {value:8.2f}")
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
