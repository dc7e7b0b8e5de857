"""A lab machine's persistent disk (/dev/vda) and its SSH host key.

The disk is ext4 made on the host with ``mkfs.ext4 -d`` (no loop mount, no root-only
tricks) holding ``crash/`` (the guest binds it at /var/crash) and ``ssh/`` (the host key
in OpenSSH format, converted by the guest to dropbear's format on first boot and kept
next to it, and root's authorized_keys). Both the disk and the key are made once per
machine and kept, so the pinned host key stays valid across reboots and lab restarts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from orchestrator.errors import FatalInfraError

DISK_NAME = "disk.img"
HOST_KEY_NAME = "ssh_host_ed25519_key"
#: Sparse: a compressed x86 dump is ~30-40 MB, so this holds many crashes.
DISK_SIZE_BYTES = 2 << 30


def _run(*argv: str, env: dict[str, str] | None = None) -> None:
    if not shutil.which(argv[0]):
        raise FatalInfraError(f"{argv[0]} not found on this host")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise FatalInfraError(f"{argv[0]} failed: {' '.join((proc.stderr or proc.stdout).split())[-300:]}")


def make_ext4(tree: Path, image: Path, size_bytes: int, *, label: str,
              uuid: str | None = None, epoch: int | None = None, journal: bool = True) -> None:
    """``mkfs.ext4 -d``: an ext4 image file populated from ``tree`` without mounting it.
    ``uuid`` and ``epoch`` pin the random and time-dependent fields (reproducible builds)."""
    with open(image, "wb") as f:
        f.truncate(size_bytes)   # sparse
    argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(tree)]
    extended = "root_owner=0:0"
    if uuid:
        argv += ["-U", uuid]
        extended += f",hash_seed={uuid}"
    if not journal:
        argv += ["-O", "^has_journal"]
    if epoch is None:
        _run(*argv, "-E", extended, str(image))
        return
    # e2fsprogs reads 0 as "no fake time", hence at least 1
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(max(epoch, 1))}
    _run(*argv, "-E", extended, str(image), env=env)
    # mkfs -d copies each inode's ctime from the host file, which cannot be set there
    paths = ["/", "/lost+found"] + ["/" + p.relative_to(tree).as_posix() for p in sorted(tree.rglob("*"))]
    script = image.with_suffix(".debugfs")
    script.write_text("".join(f'set_inode_field "{p}" ctime @{max(epoch, 1)}\n' for p in paths))
    try:
        _run("debugfs", "-w", "-f", str(script), str(image), env=env)
    finally:
        script.unlink()


def ensure_host_key(machine_dir: Path) -> Path:
    """The machine's ed25519 host key (private key path), generated once and then kept."""
    machine_dir.mkdir(parents=True, exist_ok=True)
    key = machine_dir / HOST_KEY_NAME
    if not key.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vlab-{machine_dir.name}", "-f", str(key))
    return key


def known_hosts_line(host_key: Path, address: str, port: int) -> str:
    """An OpenSSH known_hosts line pinning ``host_key`` for ``address:port``."""
    kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {kind} {blob}"


def create_disk(machine_dir: Path, host_key: Path, authorized_keys: str | Path) -> Path:
    """Make ``<machine_dir>/disk.img`` unless it exists; returns its path.

    ``authorized_keys`` is the file's text, or a path to a file (or .pub key) to copy."""
    disk = machine_dir / DISK_NAME
    if disk.exists():
        return disk
    machine_dir.mkdir(parents=True, exist_ok=True)
    text = Path(authorized_keys).read_text() if isinstance(authorized_keys, Path) else authorized_keys
    with tempfile.TemporaryDirectory(dir=machine_dir, prefix=".disk-") as tmp:
        tree = Path(tmp) / "tree"
        (tree / "crash").mkdir(parents=True)
        ssh = tree / "ssh"
        ssh.mkdir(mode=0o700)
        for src in (host_key, Path(f"{host_key}.pub")):
            shutil.copyfile(src, ssh / src.name.replace(host_key.name, HOST_KEY_NAME))
        (ssh / "authorized_keys").write_text(text if text.endswith("\n") else text + "\n")
        for name in (HOST_KEY_NAME, "authorized_keys"):
            os.chmod(ssh / name, 0o600)
        staged = Path(tmp) / DISK_NAME
        make_ext4(tree, staged, DISK_SIZE_BYTES, label="vlab")
        staged.rename(disk)
    return disk
