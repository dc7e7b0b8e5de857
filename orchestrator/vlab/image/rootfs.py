"""Assembles the guest's root filesystem tree from unpacked Debian packages.

Works for any guest arch on an x86_64 host: shared libraries are found by following the
ELF ``NEEDED`` entries with ``readelf`` (``ldd`` would have to run the foreign binary),
and module dependencies are read with ``modinfo`` from the decompressed ``.ko`` files.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import FatalInfraError

GUEST_DIR = Path(__file__).resolve().parent / "guest"


@dataclass(frozen=True)
class GuestArch:
    name: str                       # uname -m
    triplet: str                    # Debian multiarch directory
    console: str                    # the serial console the kernel and init talk on
    modules: tuple[str, ...]        # loaded by name at boot or by the orchestrator; deps follow


#: virtio_pci, ext4 and crc32c_generic (ext4's metadata checksums, a crypto-API softdep that
#: modinfo does not list) are modules in Debian 12's generic 6.1 kernel and built into the
#: 7.3 cloud kernel, where the module index lacks them and they are skipped.
_COMMON_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic",
                   "hwpoison_inject", "einj", "evdev")
GUEST_ARCHES = {
    "x86_64": GuestArch("x86_64", "x86_64-linux-gnu", "ttyS0",
                        _COMMON_MODULES + ("mce_inject", "button", "pvpanic_mmio", "pvpanic_pci",
                                           # the BMC's SEL in band (KCS); the cloud kernel lacks them
                                           "ipmi_msghandler", "ipmi_si")),
    "aarch64": GuestArch("aarch64", "aarch64-linux-gnu", "ttyAMA0", _COMMON_MODULES + ("button",)),
}

#: guest program -> where it goes in the guest (found in the unpacked packages by basename)
PROGRAMS = {
    "busybox": "bin/busybox",
    "dropbear": "usr/sbin/dropbear",
    "dropbearkey": "usr/bin/dropbearkey",
    "dropbearconvert": "usr/bin/dropbearconvert",
    "kexec": "sbin/kexec",
    "vmcore-dmesg": "sbin/vmcore-dmesg",
    "makedumpfile": "usr/bin/makedumpfile",
}

#: guest/ file -> path in the guest (guest/ stays flat so package-data ships it whole)
GUEST_FILES = {
    "inittab": "etc/inittab", "passwd": "etc/passwd", "group": "etc/group", "shells": "etc/shells",
    "rc.sh": "etc/vlab/rc.sh", "crash-dump.sh": "etc/vlab/crash-dump.sh",
    "power-button.sh": "etc/vlab/power-button.sh", "nohup": "usr/bin/nohup",
    "kdump-config": "usr/sbin/kdump-config",
}
_EXECUTABLES = ("rc.sh", "crash-dump.sh", "power-button.sh", "nohup", "kdump-config")

_EMPTY_DIRS = ("proc", "sys", "dev", "run", "tmp", "mnt/disk", "var/crash", "boot", "root",
               "usr/bin", "usr/sbin", "sbin")


def unpack_debs(debs: Iterable[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise FatalInfraError(f"dpkg-deb -x {deb.name} failed: {' '.join(proc.stderr.split())[-200:]}")


def _inside(root: Path, path: Path) -> Path:
    """Follow symlinks of ``path`` as the guest would, staying inside ``root``."""
    for _ in range(16):
        if not path.is_symlink():
            return path
        target = Path(path.readlink())
        path = root / target.relative_to("/") if target.is_absolute() else path.parent / target
    raise FatalInfraError(f"symlink loop at {path}")


def _readelf(flag: str, binary: Path) -> str:
    proc = subprocess.run(["readelf", flag, "-W", str(binary)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise FatalInfraError(f"readelf {flag} {binary.name}: {' '.join(proc.stderr.split())[-200:]}")
    return proc.stdout


def _needed(binary: Path) -> list[str]:
    return [line.split("[", 1)[1].rstrip("]") for line in _readelf("-d", binary).splitlines()
            if "(NEEDED)" in line]


def _interpreter(binary: Path) -> str | None:
    for line in _readelf("-l", binary).splitlines():
        if "Requesting program interpreter:" in line:
            return line.split(":", 1)[1].strip().rstrip("]")
    return None


def _copy_file(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def install_programs(staging: Path, rootfs: Path, arch: GuestArch) -> list[str]:
    """Copy PROGRAMS and, recursively, the shared libraries they need. Returns the sonames."""
    by_name = {p.name: p for sub in ("bin", "sbin", "usr/bin", "usr/sbin") if (staging / sub).is_dir()
               for p in (staging / sub).iterdir()}
    lib_dirs = [staging / d for d in (f"lib/{arch.triplet}", f"usr/lib/{arch.triplet}", "lib", "usr/lib")]
    pending: list[Path] = []
    for name, dest in PROGRAMS.items():
        if name not in by_name:
            raise FatalInfraError(f"{name} not found in the unpacked {arch.name} userspace packages")
        src = _inside(staging, by_name[name])
        _copy_file(src, rootfs / dest, 0o755)
        pending.append(src)
    copied: set[str] = set()
    while pending:
        binary = pending.pop()
        interp = _interpreter(binary)
        if interp and not (rootfs / interp.lstrip("/")).exists():
            _copy_file(_inside(staging, staging / interp.lstrip("/")), rootfs / interp.lstrip("/"), 0o755)
        for soname in _needed(binary):
            if soname in copied:
                continue
            found = next((d / soname for d in lib_dirs if (d / soname).exists()), None)
            if found is None:
                raise FatalInfraError(f"{binary.name} needs {soname}, which no unpacked {arch.name} package provides")
            src = _inside(staging, found)
            _copy_file(src, rootfs / "lib" / arch.triplet / soname, 0o755)
            copied.add(soname)
            pending.append(src)
    return sorted(copied)


def _module_index(modules_root: Path) -> dict[str, Path]:
    index = {}
    for path in modules_root.rglob("*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        index[name] = path
    return index


def _decompressed(path: Path) -> bytes:
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()


def install_modules(kernel_staging: Path, rootfs: Path, release: str, arch: GuestArch) -> list[str]:
    """Decompressed copies of arch.modules and their dependencies, then ``depmod -b``.
    Names the kernel has built in (or lacks) are skipped; the list installed is returned."""
    src_root = next((p for p in (kernel_staging / "usr/lib/modules" / release, kernel_staging / "lib/modules" / release)
                     if p.is_dir()), None)
    if src_root is None:
        raise FatalInfraError(f"no modules tree for {release} in the unpacked kernel packages")
    index = _module_index(src_root)
    dest_root = rootfs / "lib/modules" / release
    pending = [m for m in arch.modules if m in index]
    installed: set[str] = set()
    while pending:
        name = pending.pop()
        if name in installed:
            continue
        src = index[name]
        rel = src.relative_to(src_root).as_posix().split(".ko")[0] + ".ko"
        dest = dest_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_decompressed(src))
        installed.add(name)
        deps = subprocess.run(["modinfo", "-F", "depends", str(dest)], capture_output=True, text=True).stdout
        pending.extend(d.replace("-", "_") for d in deps.strip().split(",") if d)
    dest_root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["depmod", "-b", str(rootfs), release], capture_output=True, text=True)
    if proc.returncode != 0:
        raise FatalInfraError(f"depmod -b failed: {' '.join(proc.stderr.split())[-200:]}")
    return sorted(installed)


def install_guest_files(rootfs: Path) -> None:
    for name, dest in GUEST_FILES.items():
        mode = 0o755 if name in _EXECUTABLES else 0o644
        _copy_file(GUEST_DIR / name, rootfs / dest, mode)
    for d in _EMPTY_DIRS:
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "root").chmod(0o700)
    (rootfs / "tmp").chmod(0o1777)
    # The kernel runs /init; as busybox's "init" applet it reads /etc/inittab.
    (rootfs / "init").symlink_to("bin/busybox")
