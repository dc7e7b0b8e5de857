"""QEMU 11 for the aarch64 lab's RAS platform, from a private sysroot; nothing is installed.

Firmware-first error reports need QMP ``inject-ghes-v2-error`` (QEMU >= 10.2); Debian 12
ships QEMU 7.2. trixie-backports has QEMU 11 built against trixie's glibc, so the lab fetches
it with its own apt configuration (apt.py: trixie-backports + trixie, amd64), unpacks only
what it runs (the aarch64 binary, its data files, the EDK2 image, seven trixie libraries: the
rest comes from the host's /lib, checked with ``ld.so --list``; arm64-ras-lab.md) into
``<cache>/qemu-ras/<key>/`` and starts it through trixie's loader with ``--library-path``.
A sysroot is keyed by the exact package versions: the same versions, the same sysroot.
``ras_qemu`` answers None with the reason when it cannot be had: the lab then boots the
system QEMU and its aarch64 machines have no firmware-first injection.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.errors import FatalInfraError, OrchestratorError
from orchestrator.paths import cache_dir
from orchestrator.vlab.image.apt import PrivateApt

QEMU_PACKAGES = ("qemu-system-arm", "qemu-system-common", "qemu-system-data")
#: trixie libraries the QEMU 11 binary needs beyond bookworm's (ld.so --list, 2026-12-01)
TRIXIE_LIBRARIES = ("libc6", "libcapstone5", "libfuse3-4", "libaio1t64", "libnettle8t64",
                    "libhogweed6t64", "libgmp10")
FIRMWARE_PACKAGE = "qemu-efi-aarch64"
ARCH_ALL = ("qemu-system-data", FIRMWARE_PACKAGE)
#: (package, member) unpacked from each non-library package; the rest of them (the 32-bit
#: binary, docs, the 385 MB AAVMF images) is never needed
MEMBERS = {"qemu-system-arm": "./usr/bin/qemu-system-aarch64", "qemu-system-data": "./usr/share/qemu",
           "qemu-system-common": "./usr/lib/x86_64-linux-gnu/qemu",
           FIRMWARE_PACKAGE: "./usr/share/qemu-efi-aarch64/QEMU_EFI.fd"}
#: inject-ghes-v2-error is "Since: 10.2" (qapi/acpi-hest.json); 11 is what was measured
MIN_VERSION = (10, 2)
PINS = ("Package: " + " ".join(QEMU_PACKAGES) + "\nPin: release n=trixie-backports\nPin-Priority: 990\n")
HOST_LIBS = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
SYSROOT_FORMAT = 1
Log = Callable[[str], None]


@dataclass(frozen=True)
class RasQemu:
    """An unpacked QEMU 11 sysroot; ``argv()`` starts its qemu-system-aarch64."""
    root: Path
    version: str                        # what --version printed, e.g. 11.1.3
    packages: tuple[tuple[str, str], ...]

    @property
    def loader(self) -> Path:
        return self.root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"

    @property
    def firmware(self) -> Path:
        return self.root / "usr/share/qemu-efi-aarch64/QEMU_EFI.fd"

    def argv(self) -> list[str]:
        """The command that runs this QEMU (then its own options)."""
        r = self.root
        return [str(self.loader), "--library-path", f"{r / 'usr/lib/x86_64-linux-gnu'}:{HOST_LIBS}",
                str(r / "usr/bin/qemu-system-aarch64"), "-L", str(r / "usr/share/qemu")]

    @classmethod
    def load(cls, root: Path | str) -> RasQemu:
        data = json.loads((Path(root) / "qemu.json").read_text())
        return cls(Path(root), data["version"], tuple(tuple(p) for p in data["packages"]))


def _apt() -> PrivateApt:
    return PrivateApt(cache_dir() / "apt-qemu-ras", suites=("trixie-backports", "trixie"),
                      architectures=("amd64",), pins=PINS)


def sysroot_key(versions: dict[str, str]) -> str:
    digest = hashlib.sha256(f"format={SYSROOT_FORMAT} members={sorted(MEMBERS.items())}\n".encode())
    for name in sorted(versions):
        digest.update(f"{name}={versions[name]}\n".encode())
    return digest.hexdigest()[:16]


def fetch_ras_qemu(*, refresh: bool = False, log: Log = print) -> RasQemu:
    """The sysroot for the current candidates, fetched and unpacked if not cached yet."""
    if platform.machine() != "x86_64":
        raise FatalInfraError(f"the RAS QEMU sysroot is built for x86_64 hosts, not {platform.machine()}")
    apt = _apt()
    with apt.locked():
        apt.update_if_stale(refresh=refresh)
        infos = apt.show(f"{p}:{'all' if p in ARCH_ALL else 'amd64'}"
                         for p in (*QEMU_PACKAGES, FIRMWARE_PACKAGE, *TRIXIE_LIBRARIES))
        versions = {key: info.version for key, info in infos.items()}
        root = cache_dir() / "qemu-ras" / sysroot_key(versions)
        if (root / "qemu.json").exists():
            return RasQemu.load(root)
        started = time.monotonic()
        debs = apt.download(versions)
    ras = _unpack(debs, versions, root)
    log(f"QEMU {ras.version} for RAS machines unpacked in {time.monotonic() - started:.1f} s: {root}")
    return ras


def _unpack(debs: dict[str, Path], versions: dict[str, str], root: Path) -> RasQemu:
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=root.parent) as tmp:
        tree = Path(tmp) / "root"
        tree.mkdir()
        for key, deb in sorted(debs.items()):
            member = MEMBERS.get(key.split(":")[0])
            if member is None:                               # a library: all of it
                subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, capture_output=True)
            else:
                subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{tree}' '{member}'",
                               shell=True, check=True, capture_output=True)
        ras = RasQemu(tree, "", tuple(sorted(versions.items())))
        version = _check_runs(ras)
        (tree / "qemu.json").write_text(json.dumps({"version": version, "packages": ras.packages},
                                                   indent=2) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        tree.rename(root)                                  # whole or not at all
    return RasQemu.load(root)


def _check_runs(ras: RasQemu) -> str:
    proc = subprocess.run([*ras.argv(), "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise FatalInfraError(f"the unpacked QEMU does not run on this host: {why}")
    if (int(m[1]), int(m[2])) < MIN_VERSION:
        raise FatalInfraError(f"QEMU {m[0]} lacks inject-ghes-v2-error (needs {MIN_VERSION[0]}.{MIN_VERSION[1]})")
    return ".".join(m.groups())


def ras_qemu(log: Log = print) -> tuple[RasQemu | None, str]:
    """(the sysroot, "") or (None, why not): never raises, the lab falls back instead."""
    try:
        return fetch_ras_qemu(log=log), ""
    except (OrchestratorError, OSError, subprocess.SubprocessError) as error:
        return None, str(error)
