"""A private apt configuration for fetching guest packages; the host's apt is never touched.

Everything lives under ``<cache>/apt``: our own sources.list (trixie-backports for the 7.3
kernel, bookworm for the guest userspace and the 6.1 kernel, amd64 and arm64), our own lists, package cache
and an empty dpkg status file, so that apt resolves candidates as if nothing were
installed. Packages are only ever fetched with ``apt-get download``; the image builder
unpacks them with ``dpkg-deb -x``. Nothing is installed on the host. Which kernel package
each guest kernel flavour is: kernels.py.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.paths import cache_dir

DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
KERNEL_SUITE = "trixie-backports"      # the 7.3.x cloud kernels that carry the sysctl
USERSPACE_SUITE = "bookworm"           # busybox, dropbear, kexec-tools, makedumpfile
#: Lists older than this are refreshed; a day keeps a cached build well under its 5 s budget
#: while still picking up userspace updates the next day (the backports kernel is pinned:
#: kernels.PINNED; a pin gone from the fresh lists fails the build, naming what is there).
LISTS_MAX_AGE_HOURS = 24.0

def debian_arch(arch: str) -> str:
    try:
        return DEBIAN_ARCH[arch]
    except KeyError:
        raise ConfigError(f"unknown guest arch {arch!r} (expected one of {', '.join(DEBIAN_ARCH)})") from None


@dataclass(frozen=True)
class PackageInfo:
    name: str               # name:arch, the key used everywhere below
    version: str
    depends: tuple[str, ...]  # first alternative of each Depends/Pre-Depends group, bare names


@dataclass(frozen=True)
class PrivateApt:
    root: Path

    @classmethod
    def default(cls) -> PrivateApt:
        return cls(cache_dir() / "apt")

    # -- configuration -------------------------------------------------------------------
    def prepare(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial", "debs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        entry = f"[arch=amd64,arm64 signed-by={KEYRING}] {MIRROR}"
        sources = f"deb {entry} {KERNEL_SUITE} main\ndeb {entry} {USERSPACE_SUITE} main\n"
        path = self.root / "sources.list"
        if not path.exists() or path.read_text() != sources:
            path.write_text(sources)
            self._stamp.unlink(missing_ok=True)  # new sources: lists must be fetched again

    def options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc::sourcelist={r / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={r / 'lists'}", "-o", f"Dir::Cache={r / 'cache'}",
            "-o", f"Dir::State::status={r / 'status'}",
            # explicit, because container images often blank these (docker-clean), and
            # without a saved package cache every apt-cache call re-parses all lists (~1.5 s)
            "-o", f"Dir::Cache::pkgcache={r / 'cache/pkgcache.bin'}",
            "-o", f"Dir::Cache::srcpkgcache={r / 'cache/srcpkgcache.bin'}",
            "-o", "APT::Architectures::=amd64", "-o", "APT::Architectures::=arm64",
            # the cache lives under root's home, which the _apt sandbox user cannot enter
            "-o", "APT::Sandbox::User=root",
        ]

    @property
    def _stamp(self) -> Path:
        return self.root / "lists" / ".vlab-updated"

    def locked(self) -> AbstractContextManager[None]:
        """One apt run at a time on this cache (two image builds may run in parallel)."""
        return file_lock(self.root / ".lock")

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        if not shutil.which(tool):
            raise FatalInfraError(f"{tool} not found on this host (install apt)")
        proc = subprocess.run([tool, *self.options(), *args], cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "W:"))] or proc.stderr.splitlines()
            raise FatalInfraError(f"{tool} {args[0]} failed: {(errors or ['exit %d' % proc.returncode])[-1].strip()}")
        return proc.stdout

    # -- metadata ------------------------------------------------------------------------
    def lists_age_hours(self) -> float | None:
        return (time.time() - self._stamp.stat().st_mtime) / 3600 if self._stamp.exists() else None

    def update_if_stale(self, *, refresh: bool = False, max_age_hours: float = LISTS_MAX_AGE_HOURS) -> bool:
        """Run ``apt-get update`` on the private lists when forced, missing or old.
        Returns True if it ran."""
        self.prepare()
        age = self.lists_age_hours()
        if not refresh and age is not None and age < max_age_hours:
            return False
        self._run("apt-get", "update")
        self._stamp.touch()
        return True

    def package_names(self, prefix: str) -> list[str]:
        """Every package name in the lists that starts with ``prefix``."""
        return self._run("apt-cache", "pkgnames", prefix).split()

    def show(self, packages: Iterable[str]) -> dict[str, PackageInfo]:
        """Candidate version and dependencies of each ``name:arch``, in one apt-cache call."""
        wanted = sorted(set(packages))
        found: dict[str, PackageInfo] = {}
        for stanza in self._run("apt-cache", "show", "--no-all-versions", *wanted).split("\n\n"):
            fields = _parse_stanza(stanza)
            if "Package" not in fields:
                continue
            key = f"{fields['Package']}:{fields.get('Architecture', '')}"
            deps = ", ".join(filter(None, (fields.get("Pre-Depends"), fields.get("Depends"))))
            found[key] = PackageInfo(key, fields["Version"], tuple(_first_alternatives(deps)))
        missing = [p for p in wanted if p not in found]
        if missing:
            raise FatalInfraError(f"packages not in the private apt lists: {', '.join(missing)}")
        return found

    def library_closure(self, roots: Iterable[str], debarch: str) -> dict[str, PackageInfo]:
        """The roots plus every shared-library package (``lib*``, ``zlib1g``) they depend on,
        recursively; perl, debconf and other non-library dependencies have no place in the guest."""
        closure: dict[str, PackageInfo] = {}
        frontier = set(roots)
        while frontier:
            infos = self.show(frontier)
            closure.update(infos)
            frontier = {f"{dep}:{debarch}" for info in infos.values() for dep in info.depends
                        if dep.startswith(("lib", "zlib"))} - closure.keys()
        return closure

    # -- fetching ------------------------------------------------------------------------
    def download(self, versions: dict[str, str]) -> dict[str, Path]:
        """Fetch exact ``name:arch -> version`` pairs into ``<apt>/debs`` (kept as a cache)."""
        debs = self.root / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        paths = {key: debs / deb_filename(key, ver) for key, ver in versions.items()}
        missing = [f"{key}={versions[key]}" for key, path in sorted(paths.items()) if not path.exists()]
        if missing:
            self._run("apt-get", "download", *missing, cwd=debs)
        for key, path in paths.items():
            if not path.exists():
                raise FatalInfraError(f"apt-get download did not produce {path.name}")
        return paths


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path``, held across processes until the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def deb_filename(key: str, version: str) -> str:
    name, arch = key.split(":")
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def _parse_stanza(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    last = None
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and last:
            fields[last] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return fields


def _first_alternatives(depends: str) -> Iterator[str]:
    for group in filter(None, (g.strip() for g in depends.split(","))):
        first = group.split("|")[0].strip()
        yield first.split()[0].split(":")[0]
