"""Checks on a ``lab up`` request before anything starts: every bad input becomes a one-line
``ConfigError`` (exit status 2), never a half-started lab."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.vlab.image.kernels import DEFAULT_FLAVOUR, KERNEL_FLAVOURS

QEMU_BINARIES = {'x86_64': 'qemu-system-x86_64', 'aarch64': 'qemu-system-aarch64'}
QEMU_PACKAGES = {'x86_64': 'qemu-system-x86', 'aarch64': 'qemu-system-arm'}
DISK_NEED_BYTES = 512 << 20      # per machine: dumps land on a sparse disk; RAM is not disk


def machine_kernels(hosts: int | None, kernels: tuple[str, ...] | None,
                    asked: str = '') -> tuple[str, ...]:
    """One kernel flavour per machine. No list: every machine gets the default flavour; a list
    gives machine i the i-th flavour, so ``hosts`` (if given) must match its length."""
    if kernels is None or len(kernels) == 0:
        count = 1 if hosts is None else hosts
        if count < 1:
            raise ConfigError(f'--hosts must be at least 1, not {count}', field='--hosts')
        return (DEFAULT_FLAVOUR,) * count
    unknown = [k for k in kernels if k not in KERNEL_FLAVOURS]
    if unknown:
        raise ConfigError(f'unknown guest kernel {unknown[0]!r} (use {" or ".join(KERNEL_FLAVOURS)})',
                          field='--kernels')
    if hosts is not None and hosts != len(kernels):
        raise ConfigError(f'{asked or f"--hosts {hosts}"} but {len(kernels)} kernel(s) in --kernels '
                          f'{",".join(kernels)}: give one kernel per machine', field='--kernels')
    return tuple(kernels)


def parse_kernel_list(text: str) -> tuple[str, ...]:
    """``--kernels backports,bookworm`` -> ('backports', 'bookworm'), checked."""
    kernels = tuple(part.strip() for part in text.split(','))
    if any(not k for k in kernels):
        raise ConfigError(f'empty entry in --kernels {text!r}', field='--kernels')
    return machine_kernels(None, kernels)


def check_kernel_args(kernel_args: dict | None, names: list[str]) -> dict[str, tuple[str, ...]]:
    """``lab_up``'s kernel_args, checked: known machine names, arguments without blanks."""
    checked = {name: tuple(args) for name, args in (kernel_args or {}).items()}
    for name, args in checked.items():
        if name not in names:
            raise ConfigError(f'kernel arguments for {name!r}, which is no machine of this lab '
                              f'({", ".join(names)})', field='--kernel-arg')
        if any(not arg or any(c.isspace() for c in arg) for arg in args):
            raise ConfigError(f'kernel arguments for {name} must be single words: {args!r}', field='--kernel-arg')
    return checked


def check_request(hosts: int, arches: tuple[str, ...], ssh_port: int | None,
                  bmc_port: int | None, lab_root: Path) -> None:
    for arch in arches:    # known: lab_plan checked them
        if shutil.which(QEMU_BINARIES[arch]) is None:
            raise ConfigError(f'missing QEMU binary {QEMU_BINARIES[arch]} '
                              f'(apt-get install {QEMU_PACKAGES[arch]})')
    if ',' in str(lab_root.absolute()):   # QEMU splits its -qmp/-drive option values at commas
        raise ConfigError(f'the lab folder {lab_root} has a comma in its path, which QEMU cannot '
                          f'take in its options: set ORCH_LAB_DIR to another folder')
    lab_root.mkdir(parents=True, exist_ok=True)
    free, need = shutil.disk_usage(lab_root).free, DISK_NEED_BYTES * hosts
    if free < need:
        raise ConfigError(f'no free disk: {free >> 20} MiB free under {lab_root}, '
                          f'{need >> 20} MiB needed')
    for base, kind in ((ssh_port, socket.SOCK_STREAM), (bmc_port, socket.SOCK_DGRAM)):
        for port in range(base, base + hosts) if base else ():
            if not port_free(port, kind):
                what = 'SSH' if kind == socket.SOCK_STREAM else 'BMC'
                raise ConfigError(f'{what} port {port} is in use on 127.0.0.1')


def port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def ras_platform(arch: str, name: str, log) -> str | None:
    """The QEMU 11 sysroot an aarch64 machine runs as a RAS platform (firmware-first errors
    through GHES), or None: x86, ``ORCH_VLAB_RAS=0``, or QEMU 11 could not be had (then the
    machine boots the system QEMU, and ``log`` says what it lacks)."""
    if arch != 'aarch64':
        return None
    if os.environ.get('ORCH_VLAB_RAS', '1') == '0':
        log(f'{name}: ORCH_VLAB_RAS=0: system QEMU, no firmware-first injection on this lab machine')
        return None
    from orchestrator.vlab.image.ras_qemu import ras_qemu
    found, why = ras_qemu(log)
    if found is None:
        log(f'{name}: no firmware-first injection on this lab machine (QEMU 11 not available: {why}); '
            f'it runs the system QEMU')
        return None
    return str(found.root)
