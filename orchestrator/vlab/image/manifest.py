"""What a built guest image is (``ImageManifest``, ``manifest.json``), where images live,
and finding the newest one built for an arch and kernel flavour without the network.
build.py writes them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.paths import cache_dir
from orchestrator.vlab.image.apt import debian_arch
from orchestrator.vlab.image.kernels import DEFAULT_FLAVOUR, check_flavour

#: Bump when the manifest's meaning changes.
MANIFEST_FORMAT = 2
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
    #: kernels.KERNEL_FLAVOURS; manifests written before flavours existed are all "backports"
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
