"""Guest kernel flavours, and which Debian package provides each one's kernel.

"backports": the trixie-backports 7.3 cloud kernel PINNED below, which has
vm.panic_on_unrecoverable_memory_failure ("v10-like"). "backports-7.2": the pinned 7.2 cloud
kernel of the same suite, from before the series ("legacy", measured). "bookworm": Debian 12's
6.1 kernel (whatever bookworm's linux-image-<debarch> meta package depends on: Debian's archive
keeps only the current bookworm ABI, so a pin there would break on every security update),
which lacks the sysctl: "legacy". "generic": the pinned "backports" kernel in Debian's generic
(not cloud) build, which has the IPMI drivers (ipmi_msghandler, ipmi_si) the guest needs to
send its panic into the BMC's SEL in band (sel-in-band.md). Package facts come from the
private apt lists (apt.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.vlab.image.apt import KERNEL_SUITE, USERSPACE_SUITE, PrivateApt, debian_arch

KERNEL_FLAVOURS = ("backports", "bookworm", "backports-7.2", "generic")
#: x86 lab machines stay on the cloud build by default; "generic" (the SEL's in-band panic
#: records) is chosen per machine (`lab up --kernels generic`). Measured 2026-12-01,
#: bench/bench_vlab_boot.py --boots 3, two interleaved rounds on the loaded 2-core host:
#: boot->ready median cloud 8.8/7.0 s vs generic 7.6/8.3 s (equal within noise), but best-case
#: boot->SSH cloud 6.0/4.9 s vs generic 6.5/6.3 s (its virtio/ext4/IPMI drivers are modules),
#: and ~35 MB more RSS per machine (441 vs 407-411 MB). Not worth it for cases that do not
#: read the SEL, and every other e2e result was measured on the cloud kernel.
DEFAULT_FLAVOUR = "backports"
#: The exact trixie-backports kernel (upstream version + ABI) each pinned flavour runs. The lab's
#: verdicts are measurements of THIS kernel: a new point release is a deliberate, reviewed update,
#: never picked up by an image build on its own. To update: build with --refresh (fresh lists),
#: pick a version from the "available" list the build prints when the pin is gone (or `apt-cache
#: pkgnames linux-binary-7.3` against <cache>/apt), change it here, and run
#: tests/test_e2e_semantics.py (the probe must still find each flavour's semantics) before merging.
PINNED = {"backports": "7.3.4+deb13", "backports-7.2": "7.2.12+deb13"}
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
    return pinned_kernel(apt, arch, PINNED[flavour]) if flavour in PINNED else bookworm_kernel(apt, arch)


def generic_kernel(apt: PrivateApt, arch: str) -> KernelChoice:
    """The "backports" kernel's release in the generic build (same version, same ABI)."""
    cloud = pinned_kernel(apt, arch, PINNED["backports"])
    release = cloud.release.replace("-cloud-", "-")
    choice = KernelChoice(release, *(p.replace(cloud.release, release) for p in cloud.packages))
    known = set(apt.package_names(f"linux-binary-{release}")) | set(apt.package_names(f"linux-modules-{release}"))
    missing = [p for p in choice.packages if p.split(":")[0] not in known]
    if missing:
        raise FatalInfraError(f"no generic build of {cloud.release} in {KERNEL_SUITE}: {', '.join(missing)}")
    return choice




def pinned_kernel(apt: PrivateApt, arch: str, pin: str) -> KernelChoice:
    """The cloud kernel ``pin`` (e.g. 7.3.4+deb13); gone from the archive -> an error naming
    the pin and the versions of its series that are there (never a silent substitute)."""
    debarch = debian_arch(arch)
    available = []
    for name in apt.package_names("linux-binary-"):
        m = _KERNEL_NAME.match(name)
        if m and m["arch"] == debarch:
            available.append((tuple(int(x) for x in m["ver"].split(".")), f"{m['ver']}+{m['abi']}"))
    if pin not in {version for _, version in available}:
        series = pin.split(".")[:2]
        same = [v for key, v in sorted(available) if [str(x) for x in key[:2]] == series]
        raise FatalInfraError(
            f"the pinned lab kernel linux-binary-{pin}-cloud-{debarch} is no longer in {KERNEL_SUITE}; "
            f"available {'.'.join(series)}.x: {', '.join(same) or 'none'}. Update PINNED in "
            f"orchestrator/vlab/image/kernels.py (a reviewed change: see the comment there)")
    release = f"{pin}-cloud-{debarch}"
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
