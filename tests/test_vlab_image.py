"""Guest image builder: real apt, real packages (needs the Debian mirror or a warm cache)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.vlab.image import build as image
from orchestrator.vlab.image import cpio
from orchestrator.vlab.image.apt import PrivateApt
from orchestrator.vlab.image.kernels import PINNED, pinned_kernel
from orchestrator.vlab.image.rootfs import GUEST_DIR, GUEST_FILES


@pytest.fixture(scope="session")
def x86_manifest() -> image.ImageManifest:
    return image.build_image("x86_64", log=lambda _msg: None)


def test_manifest_records_versions_and_existing_files(x86_manifest: image.ImageManifest) -> None:
    m = x86_manifest
    assert m.kernel_release == f"{PINNED['backports']}-cloud-amd64"     # the pin, never "the newest"
    versions = dict(m.packages)
    for pkg in (f"linux-binary-{m.kernel_release}:amd64", f"linux-modules-{m.kernel_release}:amd64",
                "busybox-static:amd64", "dropbear-bin:amd64", "kexec-tools:amd64", "makedumpfile:amd64",
                "libtomcrypt1:amd64", "libgmp10:amd64", "libxenmisc4.17:amd64"):
        assert re.match(r"^[\w.:~+-]+$", versions[pkg]), pkg
    for name, digest in m.sha256:
        path = m.directory / name
        assert path.is_file() and path.stat().st_size > 0
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert m.kernel.exists() and m.initrd.exists() and m.crash_initrd.exists() and m.boot_disk.exists()
    assert {"hwpoison_inject", "virtio_blk", "virtio_net", "mce_inject", "evdev", "button"} <= set(m.modules)
    assert image.load_manifest("x86_64").inputs_key == m.inputs_key


def test_initrd_holds_the_guest_contract_files(x86_manifest: image.ImageManifest) -> None:
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(x86_manifest.initrd, "rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    for needed in ("init", "dev/console", "bin/busybox", "usr/sbin/dropbear", "usr/bin/dropbearconvert",
                   "sbin/kexec", "sbin/vmcore-dmesg", "usr/bin/makedumpfile", "usr/bin/nohup",
                   "etc/vlab/rc.sh", "etc/vlab/crash-dump.sh", "etc/inittab", "lib64/ld-linux-x86-64.so.2",
                   "lib/x86_64-linux-gnu/libgmp.so.10", "lib/x86_64-linux-gnu/libxenctrl.so.4.17"):
        assert needed in listing, needed
    assert any(p.endswith("hwpoison-inject.ko") for p in listing)
    assert any(p.endswith("modules.dep") for p in listing)
    assert listing == sorted(listing)  # reproducible order


def test_second_build_is_a_fast_no_op(x86_manifest: image.ImageManifest) -> None:
    messages: list[str] = []
    started = time.monotonic()
    again = image.build_image("x86_64", log=messages.append)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"cached build took {elapsed:.1f} s"
    assert any("up to date" in m for m in messages), messages
    assert again == x86_manifest  # same build time and digests: nothing was rebuilt


def test_forced_rebuild_is_reproducible(x86_manifest: image.ImageManifest) -> None:
    rebuilt = image.build_image("x86_64", force=True, log=lambda _msg: None)
    assert rebuilt.built_at >= x86_manifest.built_at
    assert dict(rebuilt.sha256) == dict(x86_manifest.sha256)


def test_cpio_ignores_host_mtimes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hello").write_text("hi\n")
    (tree / "link").symlink_to("etc/hello")
    cpio.write_newc(tree, tmp_path / "a.img", mtime=0, char_devices={"dev/console": (5, 1)})
    (tree / "etc/hello").touch()
    cpio.write_newc(tree, tmp_path / "b.img", mtime=0, char_devices={"dev/console": (5, 1)})
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=open(tmp_path / "a.img", "rb"),
                             capture_output=True, text=True, check=True).stdout
    assert "link -> etc/hello" in listing and "dev/console" in listing


def test_unknown_arch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="riscv64"):
        image.build_image("riscv64")


def test_no_free_disk_is_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image.shutil, "disk_usage", lambda _p: type("U", (), {"free": 10 << 20})())
    with pytest.raises(FatalInfraError, match="no free disk"):
        image.build_image("x86_64")


def test_apt_failure_is_fatal_with_one_line(tmp_path: Path) -> None:
    apt = PrivateApt(tmp_path / "apt")
    apt.prepare()
    with pytest.raises(FatalInfraError) as info:
        apt.show(["no-such-package-vlab:amd64"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("script", sorted(n for n in GUEST_FILES if n.endswith(".sh") or n == "nohup"))
def test_guest_scripts_parse_as_posix_sh(script: str) -> None:
    proc = subprocess.run(["sh", "-n", str(GUEST_DIR / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


class _Names:
    """The one PrivateApt call pinned_kernel makes, over a fixed package list."""

    def __init__(self, *names: str):
        self.names = names

    def package_names(self, prefix: str) -> list[str]:
        return [n for n in self.names if n.startswith(prefix)]


def test_a_pinned_kernel_gone_from_the_archive_names_the_pin_and_what_is_there() -> None:
    apt = _Names("linux-binary-7.3.6+deb13-cloud-amd64", "linux-binary-7.3.5+deb13-cloud-amd64",
                 "linux-binary-7.3.4+deb13-cloud-arm64", "linux-binary-7.2.12+deb13-cloud-amd64")
    with pytest.raises(FatalInfraError) as err:
        pinned_kernel(apt, "x86_64", "7.3.4+deb13")
    message = str(err.value)
    assert "linux-binary-7.3.4+deb13-cloud-amd64 is no longer in trixie-backports" in message
    assert "available 7.3.x: 7.3.5+deb13, 7.3.6+deb13" in message and "PINNED" in message
    choice = pinned_kernel(apt, "x86_64", "7.3.5+deb13")
    assert choice.packages == ("linux-binary-7.3.5+deb13-cloud-amd64:amd64",
                               "linux-modules-7.3.5+deb13-cloud-amd64:amd64")


def test_generic_flavour_is_the_backports_kernel_in_its_generic_build():
    from orchestrator.errors import FatalInfraError
    from orchestrator.vlab.image.kernels import choose_kernel
    names = ["linux-binary-7.3.4+deb13-cloud-amd64", "linux-binary-7.3.2+deb13-amd64", "linux-modules-7.3.2+deb13-amd64",
             "linux-binary-7.3.2+deb13-cloud-amd64", "linux-binary-7.3.4+deb13-amd64", "linux-modules-7.3.4+deb13-amd64"]
    choice = choose_kernel(_Names(*names), "x86_64", "generic")
    assert choice.release == "7.3.4+deb13-amd64"
    assert choice.packages == ("linux-binary-7.3.4+deb13-amd64:amd64", "linux-modules-7.3.4+deb13-amd64:amd64")
    with pytest.raises(FatalInfraError, match="no generic build of 7.3.4"):
        choose_kernel(_Names(*names[:4]), "x86_64", "generic")
