"""``orchestrator lab up|down|status|console|build``: the virtual lab's lifecycle.

``lab up`` makes the per-lab keys once, each machine's disk and host key once, starts one
BMC process per machine (the BMC owns its QEMU) and powers every machine on THROUGH ITS
BMC over IPMI, exactly as the orchestrator will drive it later. It then waits for an SSH
login with the pinned host key and for the guest's readiness (kdump armed), and writes
``lab.json`` and the inventory (docs/DESIGN.md formats). Layout: docs/DESIGN.md.
Each machine boots the guest image of its own kernel flavour (``kernels=``, see
image/kernels.py), so one lab can hold a 7.3 machine beside a 6.1 one. Request
checks are in lab/checks.py, the files on disk in lab/layout.py, power and readiness (the
project's IPMI and SSH transports) in lab/access.py, the command line in faces/cli/lab.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from orchestrator import paths
from orchestrator.errors import ConfigError, InfraError
from orchestrator.vlab.image.kernels import DEFAULT_FLAVOUR
from orchestrator.vlab.lab.access import (is_ready, machine_power, machine_shell, power_on,
                                         wait_ready)
from orchestrator.vlab.lab.checks import check_kernel_args, check_request, free_tcp_port, machine_kernels
from orchestrator.vlab.lab.layout import (BMC_USER, LAB_KERNEL_ARGS, LabMachine, LabPaths, host_features,
                                         write_inventory, write_known_hosts, write_lab_json)
from orchestrator.vlab.lab.layout import read_lab as read_lab_json
from orchestrator.vlab.bmc.process import (bmc_alive, start_bmc_process, stop_bmc_process,
                                           write_machine_spec)
from orchestrator.tunables import LAB_MEMORY_MB, LAB_READY_TIMEOUT_S, LAB_TCG_CACHE_MB, LAB_TCG_THREAD

__all__ = ['BMC_USER', 'LabMachine', 'LabPaths', 'console_command', 'ensure_up',
           'host_features', 'is_ready', 'lab_console', 'lab_down', 'lab_paths', 'lab_status',
           'lab_up', 'machine_power', 'machine_shell', 'read_lab', 'write_inventory']
Log = Callable[[str], None]
NAME_PREFIXES = {'x86_64': 'vlab-x86', 'aarch64': 'vlab-arm'}


def lab_paths() -> LabPaths:
    return LabPaths(paths.lab_dir())


def read_lab(lab: LabPaths | None = None) -> list[LabMachine]:
    """The machines of the running (or last) lab, from lab.json; [] if there is none."""
    return read_lab_json(lab or lab_paths())


def _bmc_alive(machine: LabMachine) -> bool:
    return bmc_alive(Path(machine.machine_dir))


# --- per-lab secrets, made once --------------------------------------------------------------
def _ensure_lab_secrets(lab: LabPaths) -> None:
    lab.keys.mkdir(parents=True, exist_ok=True)
    if not lab.client_key.exists():
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'vlab-client',
                        '-f', str(lab.client_key)], check=True, capture_output=True)
    if not lab.bmc_password.exists():
        fd = os.open(lab.bmc_password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(secrets.token_urlsafe(12) + '\n')


def _password(lab: LabPaths) -> bytes:
    return lab.bmc_password.read_text().strip().encode()  # bytes: pyghmi session sharing (tests)


# --- machines ---------------------------------------------------------------------------
def _prepare_machine(lab: LabPaths, name: str, arch: str, ssh_port: int, manifest,
                     accel: str, kernel_args: tuple[str, ...] = ()) -> Path:
    """Disk and host key once (kept across ups), and the spec the BMC process loads."""
    from orchestrator.vlab.qemu.machine import create_disk, ensure_host_key
    machine_dir = lab.machine_dir(name)
    create_disk(machine_dir, ensure_host_key(machine_dir), Path(f'{lab.client_key}.pub'))
    write_machine_spec(machine_dir, name=name, arch=arch, ssh_port=ssh_port, memory_mb=LAB_MEMORY_MB,
                       tcg_thread=LAB_TCG_THREAD, tcg_cache_mb=LAB_TCG_CACHE_MB,
                       accel=accel, extra_kernel_args=[*LAB_KERNEL_ARGS, *kernel_args],
                       image_manifest=str(manifest.directory / 'manifest.json'))
    return machine_dir


# --- the commands -------------------------------------------------------------------------
def lab_up(hosts: int | None = None, arch: str = 'x86_64', *,
           kernels: tuple[str, ...] | None = None, ssh_port: int | None = None,
           bmc_port: int | None = None, ready_timeout: float = LAB_READY_TIMEOUT_S,
           kernel_args: dict[str, tuple[str, ...]] | None = None, log: Log = print) -> list[LabMachine]:
    """Bring the lab up (idempotent: an already running lab of this shape is reported).
    ``kernels``: one flavour per machine (default: ``hosts`` machines, all backports).
    ``kernel_args``: machine name -> extra guest kernel arguments (e.g. ``lockdown=integrity``)."""
    kernels = machine_kernels(hosts, kernels)
    if arch not in NAME_PREFIXES:
        raise ConfigError(f'unknown arch {arch!r} (use x86_64 or aarch64)', field='--arch')
    kernel_args = check_kernel_args(kernel_args, [f'{NAME_PREFIXES[arch]}-{i + 1}' for i in range(len(kernels))])
    lab = lab_paths()
    running = read_lab(lab)
    if running and all(_bmc_alive(m) for m in running):
        return _reuse_running(running, kernels, arch, kernel_args, lab, ready_timeout, log)
    if running:
        log('lab partly down (a BMC died): restarting it')
        lab_down(log=lambda _: None)
    check_request(len(kernels), arch, ssh_port, bmc_port, lab.root)
    from orchestrator.vlab.image.build import build_image
    images = {kernel: build_image(arch, kernel, log=log) for kernel in dict.fromkeys(kernels)}
    _ensure_lab_secrets(lab)
    from orchestrator.vlab.qemu.accel import choose_accel
    # KVM only if a real guest boots with it. The verdict is cached per arch for one guest
    # kernel: ask with the default flavour's image when there is one, as every lab does.
    verdict = choose_accel(images.get(DEFAULT_FLAVOUR) or images[kernels[0]])
    try:
        machines = [_start_machine(lab, index, kernel, arch, images[kernel], verdict,
                                   ssh_port, bmc_port, kernel_args, log)
                    for index, kernel in enumerate(kernels)]
        write_known_hosts(machines, lab)
        write_lab_json(machines, lab)
        _power_on_and_wait(machines, lab, ready_timeout, log)
        write_inventory(machines, lab, paths.virtual_inventory())
    except BaseException:
        lab_down(log=lambda _: None)  # a failed `lab up` leaves no process behind
        raise
    log(f'inventory: {paths.virtual_inventory()}')
    return machines


def _reuse_running(running: list[LabMachine], kernels: tuple[str, ...], arch: str, kernel_args: dict,
                   lab: LabPaths, ready_timeout: float, log: Log) -> list[LabMachine]:
    if (tuple(m.kernel for m in running) != kernels or any(m.arch != arch for m in running)
            or any(tuple(m.kernel_args) != kernel_args.get(m.name, ()) for m in running)):
        shape = ', '.join(f'{m.arch}/{m.kernel}' for m in running)
        raise ConfigError(f'the lab is up with {len(running)} machine(s) ({shape}); '
                          f'run `orchestrator lab down` first')
    log(f'lab already up: {", ".join(m.name for m in running)}')
    _power_on_and_wait(running, lab, ready_timeout, log)
    return running


def _start_machine(lab: LabPaths, index: int, kernel: str, arch: str, manifest, verdict,
                   ssh_port: int | None, bmc_port: int | None, kernel_args: dict, log: Log) -> LabMachine:
    """Machine ``index``: its files and its BMC process (which owns its QEMU, still off)."""
    name = f'{NAME_PREFIXES[arch]}-{index + 1}'
    port = ssh_port + index if ssh_port else free_tcp_port()
    args = kernel_args.get(name, ())
    machine_dir = _prepare_machine(lab, name, arch, port, manifest, verdict.accel, args)
    pid, udp_port = start_bmc_process(machine_dir, lab.bmc_password, BMC_USER,
                                      bmc_port + index if bmc_port else 0)
    log(f'{name}: {kernel} kernel {manifest.kernel_release}, BMC on udp/{udp_port} '
        f'(pid {pid}), SSH on tcp/{port}, {verdict.accel}')
    return LabMachine(name, arch, str(machine_dir), port, udp_port, pid, verdict.accel,
                      verdict.reason, kernel, manifest.kernel_release, args)


def _power_on_and_wait(machines: list[LabMachine], lab: LabPaths, timeout: float,
                       log: Log) -> None:
    """Power on through each machine's BMC (as the orchestrator will), then wait for all."""
    console_from = {}
    for machine in machines:
        console_log = Path(machine.machine_dir) / 'console.log'
        console_from[machine.name] = console_log.stat().st_size if console_log.exists() else 0
        power_on(machine, lab)
    with ThreadPoolExecutor(max_workers=len(machines)) as pool:
        waited = pool.map(lambda m: wait_ready(m, lab, timeout, console_from[m.name]), machines)
        for machine, seconds in zip(machines, waited):
            log(f'{machine.name}: ready (SSH login, kdump armed) after {seconds:.1f} s')


def lab_down(log: Log = print) -> None:
    """Stop every BMC (each stops its QEMU); no lab process is left. Idempotent."""
    lab = lab_paths()
    machine_dirs = sorted((lab.root / 'machines').glob('*/')) if lab.root.exists() else []
    stopped = [d.name for d in machine_dirs if stop_bmc_process(d)]
    lab.lab_json.unlink(missing_ok=True)
    log(f'lab down (stopped: {", ".join(stopped)})' if stopped else 'lab is down')


def ensure_up(log: Log = print) -> list[LabMachine]:
    """The lab as it is, or one x86_64 machine brought up (``orchestrator run`` without -i)."""
    running = read_lab()
    if not running:
        return lab_up(log=log)
    return lab_up(len(running), running[0].arch, kernels=tuple(m.kernel for m in running), log=log)


def lab_status() -> list[dict[str, str]]:
    lab = lab_paths()
    rows = []
    for machine in read_lab(lab):
        power = _power_state(machine, lab)
        rows.append({'machine': machine.name, 'kernel': machine.kernel_release or machine.kernel,
                     'power': power, 'ssh port': str(machine.ssh_port),
                     'bmc port': str(machine.bmc_port),
                     'accel': f'{machine.accel.upper()} ({machine.accel_reason[:48]})',
                     'ready': 'yes' if power == 'on' and _ready_quietly(machine, lab) else 'no'})
    return rows


# A status table reports, it does not crash: every failure becomes the cell's text.
def _power_state(machine: LabMachine, lab: LabPaths) -> str:
    if not _bmc_alive(machine):
        return 'BMC down'
    power = machine_power(machine, lab)
    try:
        return power.status()
    except Exception as error:
        return f'BMC error: {error}'
    finally:
        power.close()


def _ready_quietly(machine: LabMachine, lab: LabPaths) -> bool:
    try:
        return is_ready(machine, lab)
    except InfraError:
        return False


def console_command(name: str) -> tuple[list[str], dict[str, str]]:
    """ipmitool's SOL for machine ``name``; the password goes in the environment (-E)."""
    lab = lab_paths()
    machine = next((m for m in read_lab(lab) if m.name == name), None)
    if machine is None:
        known = ', '.join(m.name for m in read_lab(lab)) or 'none: the lab is down'
        raise ConfigError(f'no lab machine {name!r} (machines: {known})')
    argv = ['ipmitool', '-I', 'lanplus', '-H', '127.0.0.1', '-p', str(machine.bmc_port),
            '-U', BMC_USER, '-E', 'sol', 'activate']
    return argv, {**os.environ, 'IPMI_PASSWORD': _password(lab).decode()}


def lab_console(name: str) -> None:
    """Interactive SOL (leave with ``~.``); replaces this process with ipmitool."""
    argv, env = console_command(name)
    print(f'SOL on {name}; leave with ~.', file=sys.stderr)
    os.execvpe(argv[0], argv, env)
