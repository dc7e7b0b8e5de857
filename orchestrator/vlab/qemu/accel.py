"""Which QEMU accelerator works on this host: KVM if a real guest boots with it, else TCG.

``/dev/kvm`` existing proves little: on nested-virtualisation hosts like this lab's, KVM
creates VMs but then aborts (MSR 0x10a) or crawls through an emulated MMU for minutes.
So the probe is a real boot of the guest kernel whose init powers off at once, under a
short timeout; the verdict is cached per (host kernel, QEMU binary, guest kernel).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.paths import cache_dir
from orchestrator.vlab.image.manifest import ImageManifest
from orchestrator.tunables import KVM_PROBE_TIMEOUT_S

_HOST_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_QEMU = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}


@dataclass(frozen=True)
class AccelVerdict:
    accel: str          # 'kvm' or 'tcg'
    reason: str         # one line: why
    probe_seconds: float
    key: str


def _cache_path(arch: str) -> Path:
    return cache_dir() / f"accel-{arch}.json"


def _probe_key(image: ImageManifest) -> str:
    qemu = _QEMU[image.arch]
    binary = shutil.which(qemu)
    stamp = os.stat(binary).st_mtime_ns if binary else 0
    return f"{platform.release()}|{qemu}@{stamp}|{image.kernel_release}"


def probe_command(image: ImageManifest) -> list[str]:
    """Boot the image's kernel with busybox as init, told to power off immediately."""
    board = ["-machine", "q35"] if image.arch == "x86_64" else ["-machine", "virt,gic-version=3"]
    return [_QEMU[image.arch], *board, "-accel", "kvm", "-cpu", "host", "-m", "512", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", f"console={image.console} panic=-1 rdinit=/bin/busybox -- poweroff -f"]


def probe_kvm(image: ImageManifest, timeout: float = KVM_PROBE_TIMEOUT_S) -> AccelVerdict:
    key = _probe_key(image)
    if _HOST_ARCH.get(platform.machine()) != image.arch:
        return AccelVerdict("tcg", f"{image.arch} guest on a {platform.machine()} host", 0.0, key)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelVerdict("tcg", "/dev/kvm absent or not accessible", 0.0, key)
    started = time.monotonic()
    # own session: a hung QEMU is killed with its whole process group on timeout
    proc = subprocess.Popen(probe_command(image), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        return AccelVerdict("tcg", f"KVM guest did not power off within {timeout:.0f} s (hangs)",
                            round(time.monotonic() - started, 2), key)
    seconds = round(time.monotonic() - started, 2)
    text = out.decode(errors="replace")
    if proc.returncode == 0 and "Power down" in text:
        return AccelVerdict("kvm", f"KVM boot to poweroff in {seconds:.1f} s", seconds, key)
    last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), f"exit {proc.returncode}")
    return AccelVerdict("tcg", f"KVM boot failed (rc {proc.returncode}): {last.strip()[:160]}", seconds, key)


def choose_accel(image: ImageManifest, *, reprobe: bool = False) -> AccelVerdict:
    """'kvm' or 'tcg' for machines of ``image``; probes once, then answers from the cache."""
    path = _cache_path(image.arch)
    key = _probe_key(image)
    if not reprobe and path.exists():
        try:
            cached = AccelVerdict(**json.loads(path.read_text()))
            if cached.key == key:
                return cached
        except (ValueError, TypeError):
            pass
    verdict = probe_kvm(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(verdict), indent=2) + "\n")
    return verdict
