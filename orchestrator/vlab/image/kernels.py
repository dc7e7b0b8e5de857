"""Guest kernel flavours, and which Debian package provides each one's kernel.

"backports": trixie-backports' newest 7.3.x cloud kernel, which has
vm.panic_on_unrecoverable_memory_failure. "bookworm": Debian 12's 6.1 kernel (whatever
bookworm's linux-image-<debarch> meta package depends on), which lacks it: the "legacy"
semantics of orchestrator/kernel/semantics.yaml. "generic": the kernel "backports" picks,
in Debian's generic (not cloud) build, which has the IPMI drivers (ipmi_msghandler, ipmi_si)
the guest needs to send its panic into the BMC's SEL in band (sel-in-band.md). Package
facts come from the private apt lists (apt.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.vlab.image.apt import KERNEL_SUITE, USERSPACE_SUITE, PrivateApt, debian_arch

KERNEL_FLAVOURS = ("backports", "bookworm", "generic")
#: x86 lab machines stay on the cloud build by default; "generic" (the SEL's in-band panic
#: records) is chosen per machine (`lab up --kernels generic`). Measured 2026-12-01,
#: bench/bench_vlab_boot.py --boots 3, two interleaved rounds on the loaded 2-core host:
#: boot->ready median cloud 8.8/7.0 s vs generic 7.6/8.3 s (equal within noise), but best-case
#: boot->SSH cloud 6.0/4.9 s vs generic 6.5/6.3 s (its virtio/ext4/IPMI drivers are modules),
#: and ~35 MB more RSS per machine (441 vs 407-411 MB). Not worth it for cases that do not
#: read the SEL, and every other e2e result was measured on the cloud kernel.
DEFAULT_FLAVOUR = "backports"
#: The oldest kernel series with vm.panic_on_unrecoverable_memory_failure.
MIN_KERNEL_SERIES = (7, 3)
#: bookworm's kernel series; a meta package resolving to anything else means the lists are
#: not what we think (e.g. a backports meta package outranking bookworm's) and must not be used.
BOOKWORM_SERIES = (6, 1)

_BOOKWORM_IMAGE = re.compile(r"^linux-image-(?P<ver>(\d+)\.(\d+)\.\d+)-\d+-(?P<arch>amd64|arm64)$")
_KERNEL_NAME = re.compile(r"^linux-binary-(?P<ver>(\d+)\.(\d+)\.(\d+))\+(?P<abi>deb\d+)-cloud-(?P<arch>amd64|arm64)$")


def check_flavour(kernel: str) -> str:
    if kernel not in KERNEL_FLAVOURS:
        raise ConfigError(f"unknown guest kernel {kernel!r} (expected one of {', '.join(KERNEL_FLAVOURS)})")
    return kernel


@dataclass(frozen=True)
class KernelChoice:
    release: str                  # `uname -r` of the guest, e.g. 7.3.4+deb13-cloud-amd64
    image_package: str            # linux-binary-<release>:<debarch> / linux-image-<release>:<debarch>
    modules_package: str | None   # linux-modules-<release>:<debarch>; None when the image package
                                  # carries the modules itself (bookworm's linux-image-*)

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.image_package,) + ((self.modules_package,) if self.modules_package else ())


def choose_kernel(apt: PrivateApt, arch: str, flavour: str = DEFAULT_FLAVOUR) -> KernelChoice:
    """The kernel package(s) of ``flavour`` for ``arch`` (see KERNEL_FLAVOURS)."""
    check_flavour(flavour)
    if flavour == "generic":
        return generic_kernel(apt, arch)
    return newest_kernel(apt, arch) if flavour == "backports" else bookworm_kernel(apt, arch)


def generic_kernel(apt: PrivateApt, arch: str) -> KernelChoice:
    """The "backports" kernel's release in the generic build (same version, same ABI)."""
    cloud = newest_kernel(apt, arch)
    release = cloud.release.replace("-cloud-", "-")
    choice = KernelChoice(release, *(p.replace(cloud.release, release) for p in cloud.packages))
    known = set(apt.package_names(f"linux-binary-{release}")) | set(apt.package_names(f"linux-modules-{release}"))
    missing = [p for p in choice.packages if p.split(":")[0] not in known]
    if missing:
        raise FatalInfraError(f"no generic build of {cloud.release} in {KERNEL_SUITE}: {', '.join(missing)}")
    return choice


def newest_kernel(apt: PrivateApt, arch: str, minimum: tuple[int, int] = MIN_KERNEL_SERIES) -> KernelChoice:
    debarch = debian_arch(arch)
    best: tuple[tuple[int, ...], str] | None = None
    for name in apt.package_names("linux-binary-"):
        m = _KERNEL_NAME.match(name)
        if not m or m["arch"] != debarch:
            continue
        version = tuple(int(x) for x in m["ver"].split("."))
        if version[:2] >= minimum and (best is None or version > best[0]):
            best = (version, f"{m['ver']}+{m['abi']}-cloud-{debarch}")
    if best is None:
        raise FatalInfraError(f"no linux-binary-*-cloud-{debarch} >= {minimum[0]}.{minimum[1]} in {KERNEL_SUITE}")
    release = best[1]
    return KernelChoice(release, f"linux-binary-{release}:{debarch}", f"linux-modules-{release}:{debarch}")


def bookworm_kernel(apt: PrivateApt, arch: str) -> KernelChoice:
    """The ABI package bookworm's ``linux-image-<debarch>`` meta package depends on now.
    The candidate is bookworm's: trixie-backports is NotAutomatic (priority 100 < 500)."""
    debarch = debian_arch(arch)
    meta = apt.show([f"linux-image-{debarch}:{debarch}"])[f"linux-image-{debarch}:{debarch}"]
    found = [m for m in map(_BOOKWORM_IMAGE.match, meta.depends) if m and m["arch"] == debarch]
    series = tuple(int(x) for x in found[0]["ver"].split(".")[:2]) if found else None
    if series != BOOKWORM_SERIES:
        raise FatalInfraError(f"linux-image-{debarch} {meta.version} depends on "
                              f"{', '.join(meta.depends) or 'nothing'}: no {USERSPACE_SUITE} "
                              f"{BOOKWORM_SERIES[0]}.{BOOKWORM_SERIES[1]} kernel")
    release = found[0].string.removeprefix("linux-image-")
    return KernelChoice(release, f"linux-image-{release}:{debarch}", None)
