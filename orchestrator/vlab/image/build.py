"""Guest image builder: kernel, initramfs and crash initramfs for one guest arch.

    python -m orchestrator.vlab.image.build build --arch x86_64|aarch64 [--kernel FLAVOUR]
                                            [--refresh] [--force]

Kernel flavours (kernels.py): ``backports`` (default; the pinned trixie-backports 7.3, has the
sysctl), ``backports-7.2`` (the pinned 7.2, without it) and ``bookworm`` (Debian 12's 6.1,
without it). All images share the userspace.
Output: ``<cache>/images/<arch>-<kernel release>/`` (so the flavours sit side by side) with ``vmlinuz``, ``initrd.img``
(the guest userspace; it is also the crash kernel's initramfs), ``boot.img`` (a read-only
disk holding vmlinuz + crash-initrd.img, from which the guest loads its own crash kernel)
and ``manifest.json`` (manifest.py).
A build is keyed by a hash of its inputs (exact package versions, guest scripts, builder
code); when nothing changed it does nothing and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID

from orchestrator.errors import ConfigError, FatalInfraError, OrchestratorError
from orchestrator.vlab.image import cpio, disk, rootfs
from orchestrator.vlab.image.apt import PrivateApt, debian_arch, file_lock
from orchestrator.vlab.image.kernels import DEFAULT_FLAVOUR, PINNED, KernelChoice, check_flavour, choose_kernel
from orchestrator.vlab.image.manifest import (MANIFEST_FORMAT, ImageManifest, images_dir, load_manifest,
                                              sha256_file)

USERSPACE_PACKAGES = ("busybox-static", "dropbear-bin", "kexec-tools", "makedumpfile")
#: A build unpacks ~150 MB and writes ~100 MB; refuse early rather than fail half way.
MIN_FREE_BYTES = 2 << 30
Log = Callable[[str], None]
__all__ = ["ImageManifest", "build_image", "images_dir", "inputs_key", "load_manifest", "main"]


def inputs_key(arch: str, versions: dict[str, str]) -> str:
    """Everything that determines the image bytes: package versions, guest files, builder code."""
    digest = hashlib.sha256(f"format={MANIFEST_FORMAT} arch={arch}\n".encode())
    # the kernel pins: images built while the lab took "the newest 7.3.x" are not reused as pinned
    digest.update(f"pins={sorted(PINNED.items())}\n".encode())
    for name in sorted(versions):
        digest.update(f"{name}={versions[name]}\n".encode())
    sources = [rootfs.GUEST_DIR / n for n in sorted(rootfs.GUEST_FILES)]
    sources += [Path(rootfs.__file__), Path(cpio.__file__), Path(disk.__file__)]
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(os.environ.get("SOURCE_DATE_EPOCH", "0").encode())
    return digest.hexdigest()


def _up_to_date(apt: PrivateApt, arch: str, out_dir: Path) -> ImageManifest | None:
    """The existing manifest if its packages still resolve to the same versions (then their
    dependencies cannot have changed either) and its inputs key and files still match."""
    path = out_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = ImageManifest.from_file(path)
    except (ConfigError, ValueError, KeyError, TypeError):
        return None
    current = {key: info.version for key, info in apt.show(dict(manifest.packages)).items()}
    if current != dict(manifest.packages) or inputs_key(arch, current) != manifest.inputs_key:
        return None
    if any(not (out_dir / name).exists() or sha256_file(out_dir / name) != digest for name, digest in manifest.sha256):
        return None
    return manifest


def _make_boot_disk(staged: Path, tree: Path, key: str, epoch: int) -> None:
    """``boot.img``: the kernel and crash initramfs on a small read-only disk, from which the
    guest loads its crash kernel. Carrying them inside the initramfs instead would cost every
    boot their unpacking (~1.5 s for the 42 MB arm64 Image under TCG) and QEMU a ROM copy."""
    tree.mkdir()
    for src, name in (("vmlinuz", "vmlinuz"), ("initrd.img", "crash-initrd.img")):
        shutil.copyfile(staged / src, tree / name)
        os.utime(tree / name, (epoch, epoch))
    payload = sum(p.stat().st_size for p in tree.iterdir())
    size = (payload * 11 // 10 + (8 << 20)) // (1 << 20) << 20
    uuid = str(UUID(key[:32]))   # derived from the inputs: same inputs, same bytes
    disk.make_ext4(tree, staged / "boot.img", size, label="vlab-boot", uuid=uuid, epoch=epoch, journal=False)


def build_image(arch: str, kernel: str = DEFAULT_FLAVOUR, *, refresh: bool = False, force: bool = False,
                log: Log = print) -> ImageManifest:
    """Build (or reuse) the guest image for ``arch`` ('x86_64' or 'aarch64') with the
    ``kernel`` flavour ('backports' or 'bookworm', see kernels.KERNEL_FLAVOURS)."""
    debian_arch(arch)  # validates arch and flavour before anything touches the disk
    check_flavour(kernel)
    images_dir().mkdir(parents=True, exist_ok=True)
    # one build per arch at a time: a lab and a test run may both ask for the image
    with file_lock(images_dir() / f".lock-{arch}"):
        return _build_locked(arch, kernel, refresh=refresh, force=force, log=log)


def _build_locked(arch: str, flavour: str, *, refresh: bool, force: bool, log: Log) -> ImageManifest:
    started = time.monotonic()
    free = shutil.disk_usage(images_dir()).free
    if free < MIN_FREE_BYTES:
        raise FatalInfraError(f"no free disk: {free >> 20} MiB left under {images_dir()}, need {MIN_FREE_BYTES >> 20} MiB")
    apt = PrivateApt.default()
    with apt.locked():
        if apt.update_if_stale(refresh=refresh):
            log(f"apt lists refreshed ({apt.root})")
        kernel = choose_kernel(apt, arch, flavour)
        out_dir = images_dir() / f"{arch}-{kernel.release}"
        if not force and (manifest := _up_to_date(apt, arch, out_dir)):
            log(f"{arch} image {kernel.release} up to date, nothing to do ({time.monotonic() - started:.1f} s): {out_dir}")
            return manifest
        packages = _fetch_packages(apt, arch, kernel, log)
    with tempfile.TemporaryDirectory(prefix=f".build-{arch}-", dir=images_dir()) as tmp:
        manifest = _assemble(Path(tmp), arch, flavour, kernel, packages, out_dir, started, log)
    log(f"{arch} image built in {manifest.build_seconds:.1f} s: {out_dir}")
    return manifest


@dataclass(frozen=True)
class _Packages:
    userspace: tuple[str, ...]      # name:debarch of the userspace closure, sorted
    versions: dict[str, str]        # every package (userspace and kernel) -> exact version
    debs: dict[str, Path]


def _fetch_packages(apt: PrivateApt, arch: str, kernel: KernelChoice, log: Log) -> _Packages:
    """Resolve the userspace closure and the kernel to exact versions and download them."""
    debarch = debian_arch(arch)
    closure = apt.library_closure([f"{p}:{debarch}" for p in USERSPACE_PACKAGES], debarch)
    kernel_infos = apt.show(kernel.packages)
    versions = {key: info.version for key, info in {**closure, **kernel_infos}.items()}
    log(f"building {arch} image: kernel {kernel.release} ({versions[kernel.image_package]}), "
        f"{len(closure)} userspace packages")
    return _Packages(tuple(sorted(closure)), versions, apt.download(versions))


def _assemble(work: Path, arch: str, flavour: str, kernel: KernelChoice, packages: _Packages,
              out_dir: Path, started: float, log: Log) -> ImageManifest:
    """Unpack, build the three image files and the manifest in ``work``, then swap them in."""
    guest = rootfs.GUEST_ARCHES[arch]
    key = inputs_key(arch, packages.versions)
    rootfs.unpack_debs([packages.debs[k] for k in packages.userspace], work / "userspace")
    rootfs.unpack_debs([packages.debs[p] for p in kernel.packages], work / "kernel")
    tree = work / "rootfs"
    libs = rootfs.install_programs(work / "userspace", tree, guest)
    modules = rootfs.install_modules(work / "kernel", tree, kernel.release, guest)
    rootfs.install_guest_files(tree)
    log(f"rootfs: {len(libs)} shared libraries, modules: {', '.join(modules)}")
    staged = work / "out"
    staged.mkdir()
    vmlinuz = next((work / "kernel").glob(f"*/lib/modules/{kernel.release}/vmlinuz"), None) \
        or next((work / "kernel").glob("boot/vmlinuz-*"), None)
    if vmlinuz is None:
        raise FatalInfraError(f"no vmlinuz in {kernel.image_package}")
    shutil.copyfile(vmlinuz, staged / "vmlinuz")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    cpio.write_newc(tree, staged / "initrd.img", mtime=epoch, char_devices={"dev/console": (5, 1)})
    _make_boot_disk(staged, work / "boot", key, epoch)
    names = ("vmlinuz", "initrd.img", "boot.img")
    manifest = ImageManifest(
        arch=arch, kernel_release=kernel.release, console=guest.console,
        kernel=out_dir / "vmlinuz", initrd=out_dir / "initrd.img", crash_initrd=out_dir / "initrd.img",
        boot_disk=out_dir / "boot.img", packages=tuple(sorted(packages.versions.items())),
        modules=tuple(modules), sha256=tuple((n, sha256_file(staged / n)) for n in names), inputs_key=key,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(time.monotonic() - started, 2), kernel_flavour=flavour)
    (staged / "manifest.json").write_text(manifest.to_json())
    # swap in whole: a reader never sees a half-written image directory
    if out_dir.exists():
        out_dir.rename(work / "previous")
    staged.rename(out_dir)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.vlab.image.build", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build or reuse the guest image for one arch")
    build.add_argument("--arch", required=True, help="x86_64 or aarch64")
    build.add_argument("--kernel", default=DEFAULT_FLAVOUR, help="backports (7.3, default), backports-7.2 or bookworm (6.1)")
    build.add_argument("--refresh", action="store_true", help="run apt-get update even if the lists are fresh")
    build.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    args = parser.parse_args(argv)
    try:
        manifest = build_image(args.arch, args.kernel, refresh=args.refresh, force=args.force)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(manifest.directory / "manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
