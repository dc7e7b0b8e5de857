"""Guest image builder: kernel, initramfs and crash initramfs for one guest arch.

    python -m orchestrator.vlab.image.build build --arch x86_64|aarch64 [--kernel backports|bookworm]
                                            [--refresh] [--force]

Kernel flavours (apt.KERNEL_FLAVOURS): ``backports`` (default; trixie-backports 7.3, has the
sysctl) and ``bookworm`` (Debian 12's 6.1, without it). Both images share the userspace.
Output: ``<cache>/images/<arch>-<kernel release>/`` (so the flavours sit side by side) with ``vmlinuz``, ``initrd.img``
(the guest userspace; it is also the crash kernel's initramfs), ``boot.img`` (a read-only
disk holding vmlinuz + crash-initrd.img, from which the guest loads its own crash kernel)
and ``manifest.json``.
A build is keyed by a hash of its inputs (exact package versions, guest scripts, builder
code); when nothing changed it does nothing and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID

from orchestrator.errors import ConfigError, FatalInfraError, OrchestratorError
from orchestrator.paths import cache_dir
from orchestrator.vlab.image import cpio, disk, rootfs
from orchestrator.vlab.image.apt import DEFAULT_FLAVOUR, PrivateApt, check_flavour, debian_arch, file_lock

#: Bump when the manifest's meaning changes.
MANIFEST_FORMAT = 2
USERSPACE_PACKAGES = ("busybox-static", "dropbear-bin", "kexec-tools", "makedumpfile")
#: A build unpacks ~150 MB and writes ~100 MB; refuse early rather than fail half way.
MIN_FREE_BYTES = 2 << 30
Log = Callable[[str], None]
_PATH_FIELDS = ("kernel", "initrd", "crash_initrd", "boot_disk")


@dataclass(frozen=True)
class ImageManifest:
    arch: str
    kernel_release: str
    console: str                            # ttyS0 / ttyAMA0
    kernel: Path
    initrd: Path
    crash_initrd: Path                      # the same file as initrd: one userspace serves both
    boot_disk: Path                         # read-only ext4: vmlinuz + crash-initrd.img for kexec
    packages: tuple[tuple[str, str], ...]   # (name:debarch, exact version), sorted
    modules: tuple[str, ...]                # kernel modules in the image (deps included)
    sha256: tuple[tuple[str, str], ...]     # (file name, hex digest)
    inputs_key: str
    built_at: str                           # UTC, ISO 8601
    build_seconds: float
    format: int = MANIFEST_FORMAT
    #: apt.KERNEL_FLAVOURS; manifests written before flavours existed are all "backports"
    kernel_flavour: str = DEFAULT_FLAVOUR

    @property
    def directory(self) -> Path:
        return self.kernel.parent

    def package_version(self, name: str) -> str:
        return dict(self.packages)[name]

    def to_json(self) -> str:
        data = asdict(self)
        for key in _PATH_FIELDS:
            data[key] = Path(data[key]).name   # relative: the cache dir may move
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> ImageManifest:
        data = json.loads(path.read_text())
        if data.get("format") != MANIFEST_FORMAT:
            raise ConfigError("image manifest of another format; rebuild the image", path=str(path))
        for key in _PATH_FIELDS:
            data[key] = path.parent / data[key]
        for key in ("packages", "sha256"):
            data[key] = tuple(tuple(pair) for pair in data[key])
        data["modules"] = tuple(data["modules"])
        return cls(**data)


def images_dir() -> Path:
    return cache_dir() / "images"


def load_manifest(arch: str, kernel: str = DEFAULT_FLAVOUR) -> ImageManifest:
    """The newest image built for ``arch`` with the ``kernel`` flavour, without touching the network."""
    debian_arch(arch)  # validates arch
    check_flavour(kernel)
    found = []
    for path in images_dir().glob(f"{arch}-*/manifest.json"):
        try:
            manifest = ImageManifest.from_file(path)
        except (ConfigError, ValueError, KeyError, TypeError):
            continue   # an older format or a damaged manifest: not usable, rebuild instead
        if manifest.kernel_flavour == kernel:
            found.append(manifest)
    found.sort(key=lambda m: m.built_at)
    if not found:
        raise ConfigError(f"no {arch} guest image with the {kernel} kernel built yet (run: python -m "
                          f"orchestrator.vlab.image.build build --arch {arch} --kernel {kernel})")
    return found[-1]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inputs_key(arch: str, versions: dict[str, str]) -> str:
    """Everything that determines the image bytes: package versions, guest files, builder code."""
    digest = hashlib.sha256(f"format={MANIFEST_FORMAT} arch={arch}\n".encode())
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
    if any(not (out_dir / name).exists() or _sha256(out_dir / name) != digest for name, digest in manifest.sha256):
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
    ``kernel`` flavour ('backports' or 'bookworm', see apt.KERNEL_FLAVOURS)."""
    debian_arch(arch)  # validates arch and flavour before anything touches the disk
    check_flavour(kernel)
    images_dir().mkdir(parents=True, exist_ok=True)
    # one build per arch at a time: a lab and a test run may both ask for the image
    with file_lock(images_dir() / f".lock-{arch}"):
        return _build_locked(arch, kernel, refresh=refresh, force=force, log=log)


def _build_locked(arch: str, flavour: str, *, refresh: bool, force: bool, log: Log) -> ImageManifest:
    debarch = debian_arch(arch)
    guest = rootfs.GUEST_ARCHES[arch]
    started = time.monotonic()
    apt = PrivateApt.default()
    free = shutil.disk_usage(images_dir()).free
    if free < MIN_FREE_BYTES:
        raise FatalInfraError(f"no free disk: {free >> 20} MiB left under {images_dir()}, need {MIN_FREE_BYTES >> 20} MiB")
    with apt.locked():
        if apt.update_if_stale(refresh=refresh):
            log(f"apt lists refreshed ({apt.root})")
        kernel = apt.kernel(arch, flavour)
        out_dir = images_dir() / f"{arch}-{kernel.release}"
        if not force and (manifest := _up_to_date(apt, arch, out_dir)):
            log(f"{arch} image {kernel.release} up to date, nothing to do ({time.monotonic() - started:.1f} s): {out_dir}")
            return manifest
        roots = [f"{p}:{debarch}" for p in USERSPACE_PACKAGES]
        closure = apt.library_closure(roots, debarch)
        kernel_infos = apt.show(kernel.packages)
        versions = {key: info.version for key, info in {**closure, **kernel_infos}.items()}
        log(f"building {arch} image: kernel {kernel.release} ({versions[kernel.image_package]}), "
            f"{len(closure)} userspace packages")
        debs = apt.download(versions)
    key = inputs_key(arch, versions)
    with tempfile.TemporaryDirectory(prefix=f".build-{arch}-", dir=images_dir()) as tmp:
        work = Path(tmp)
        rootfs.unpack_debs([debs[k] for k in sorted(closure)], work / "userspace")
        rootfs.unpack_debs([debs[p] for p in kernel.packages], work / "kernel")
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
            boot_disk=out_dir / "boot.img", packages=tuple(sorted(versions.items())), modules=tuple(modules),
            sha256=tuple((n, _sha256(staged / n)) for n in names), inputs_key=key,
            built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            build_seconds=round(time.monotonic() - started, 2), kernel_flavour=flavour)
        (staged / "manifest.json").write_text(manifest.to_json())
        # swap in whole: a reader never sees a half-written image directory
        old = work / "previous"
        if out_dir.exists():
            out_dir.rename(old)
        staged.rename(out_dir)
    log(f"{arch} image built in {manifest.build_seconds:.1f} s: {out_dir}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.vlab.image.build", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build or reuse the guest image for one arch")
    build.add_argument("--arch", required=True, help="x86_64 or aarch64")
    build.add_argument("--kernel", default=DEFAULT_FLAVOUR, help="backports (7.3, default) or bookworm (6.1)")
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
