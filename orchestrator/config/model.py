"""Typed, immutable configuration objects, built once from YAML (see loader modules)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError

ARCHES = ("x86_64", "aarch64")
KDUMP_LAYOUTS = ("debian", "rhel", "auto")
#: kernel/semantics.yaml's kinds of kernel; an inventory may name one per host (``semantics:``).
KERNEL_SEMANTICS = ("v10-like", "v4-like", "legacy")


@dataclass(frozen=True)
class SecretRef:
    """A password by reference: an environment variable or a file, never inline."""

    env: str | None = None
    file: Path | None = None
    origin: str = ""            # "file:line" of the reference, for error messages

    def resolve(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"environment variable {self.env} is not set: export it before the run, or "
                                  "give the password as {file: PATH}", path=self.origin or None)
            return value
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read password file {self.file}: {exc.strerror}", path=self.origin or None)


@dataclass(frozen=True)
class SshConfig:
    address: str
    port: int = 22
    user: str = "root"
    key_file: Path | None = None
    key_passphrase: SecretRef | None = None   # for an encrypted key_file; resolved only when connecting
    known_hosts: Path | None = None     # OpenSSH known_hosts holding the pinned host key
    host_key: str | None = None         # or the pinned key inline: "ssh-ed25519 AAAA..."
    connect_timeout: float = 10.0
    banner_timeout: float | None = None # default: connect_timeout. A NAT or QEMU's user network
                                        # accepts TCP for a host still booting and stalls there
    keepalive: int = 5                  # seconds between SSH keepalives: a dead peer becomes an error
    command_timeout: float = 60.0       # default for calls that do not name their own


@dataclass(frozen=True)
class BmcConfig:
    address: str
    user: str
    password: SecretRef
    port: int = 623
    min_command_interval: float = 0.0   # some real BMCs crash when polled too fast (Ironic: 5 s)


@dataclass(frozen=True)
class KdumpConfig:
    layout: str = "auto"                # debian | rhel | auto
    path: str = "/var/crash"


@dataclass(frozen=True)
class Host:
    name: str
    arch: str
    platform: str
    ssh: SshConfig
    bmc: BmcConfig | None
    features: frozenset[str] = frozenset()
    kdump: KdumpConfig = KdumpConfig()
    destructive: bool = False
    groups: tuple[str, ...] = ()
    origin: str = ""                    # "file:line" where the host is defined
    # Where the orchestrator keeps its own records ON the host (lease, arm journal): a folder
    # on a disk that survives the host's panics and reboots, never a tmpfs.
    state_dir: str = "/var/lib/memfail-orchestrator"
    # The kernel's semantics, named by the operator (KERNEL_SEMANTICS) for hosts that may not
    # be probed; None: decided from the kernel's files and symbols, else by the slab probe.
    semantics: str | None = None


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: tuple[Host, ...]
    digest: str                         # sha256 of the file's bytes, recorded in run.json

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)
