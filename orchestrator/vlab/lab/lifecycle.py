"""``orchestrator lab up|down|status|console|build``: the virtual lab's lifecycle.

``lab up`` makes the per-lab keys once, each machine's disk and host key once, starts one
BMC process per machine (the BMC owns its QEMU) and powers every machine on THROUGH ITS
BMC over IPMI, exactly as the orchestrator will drive it later. It then waits for an SSH
login with the pinned host key and for the guest's readiness (kdump armed), and writes
``lab.json`` and the inventory (docs/DESIGN.md formats). Layout: docs/DESIGN.md.
Each machine boots the guest image of its own kernel flavour (``kernels=``, see
apt.KERNEL_FLAVOURS), so one lab can hold a 7.3 machine beside a 6.1 one. Request checks
are in lab_checks.py, the command line in lab_cli.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from orchestrator import paths
from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.vlab.image.apt import DEFAULT_FLAVOUR
from orchestrator.vlab.lab.checks import check_request, free_tcp_port, machine_kernels
from orchestrator.vlab.lab.layout import (BMC_USER, LabMachine, LabPaths, host_features,
                                         write_inventory, write_known_hosts, write_lab_json)
from orchestrator.vlab.lab.layout import read_lab as read_lab_json
from orchestrator.vlab.bmc.process import (process_alive, start_bmc_process, stop_bmc_process,
                                        write_machine_spec)
from orchestrator.tunables import LAB_MEMORY_MB, LAB_READY_TIMEOUT_S, LAB_TCG_CACHE_MB, LAB_TCG_THREAD

__all__ = ['BMC_USER', 'LabMachine', 'LabPaths', 'console_command', 'ensure_up',
           'host_features', 'is_ready', 'lab_console', 'lab_down', 'lab_paths', 'lab_status',
           'lab_up', 'read_lab', 'write_inventory']
Log = Callable[[str], None]
NAME_PREFIXES = {'x86_64': 'vlab-x86', 'aarch64': 'vlab-arm'}
READY_PROBE = 'test -e /run/vlab-ready || grep -qx 1 /sys/kernel/kexec_crash_loaded'


def lab_paths() -> LabPaths:
    return LabPaths(paths.lab_dir())


def read_lab(lab: LabPaths | None = None) -> list[LabMachine]:
    """The machines of the running (or last) lab, from lab.json; [] if there is none."""
    return read_lab_json(lab or lab_paths())


def _bmc_alive(machine: LabMachine) -> bool:
    return process_alive(Path(machine.machine_dir) / 'bmc.pid', 'orchestrator.vlab.bmc.process') is not None


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
    return lab.bmc_password.read_text().strip().encode()  # bytes: pyghmi session sharing


# --- machines ---------------------------------------------------------------------------
def _prepare_machine(lab: LabPaths, name: str, arch: str, ssh_port: int, manifest,
                     accel: str) -> Path:
    """Disk and host key once (kept across ups), and the spec the BMC process loads."""
    from orchestrator.vlab.qemu.machine import create_disk, ensure_host_key
    machine_dir = lab.machine_dir(name)
    create_disk(machine_dir, ensure_host_key(machine_dir), Path(f'{lab.client_key}.pub'))
    write_machine_spec(machine_dir, name=name, arch=arch, ssh_port=ssh_port, memory_mb=LAB_MEMORY_MB,
                       tcg_thread=LAB_TCG_THREAD, tcg_cache_mb=LAB_TCG_CACHE_MB,
                       accel=accel, image_manifest=str(manifest.directory / 'manifest.json'))
    return machine_dir


def _ipmi(machine: LabMachine, lab: LabPaths):
    """A pyghmi client to the machine's BMC (bytes credentials: see DESIGN.md)."""
    from pyghmi.exceptions import IpmiException
    from pyghmi.ipmi.command import Command
    for attempt in (1, 2):
        try:
            return Command(bmc='127.0.0.1', port=machine.bmc_port, userid=BMC_USER.encode(),
                           password=_password(lab))
        except IpmiException:  # UDP: one lost login exchange must not fail a lab command
            if attempt == 2:
                raise


def _ssh_argv(machine: LabMachine, lab: LabPaths, command: str, timeout: int = 5) -> list[str]:
    return ['ssh', '-i', str(lab.client_key), '-p', str(machine.ssh_port), '-o', 'BatchMode=yes',
            '-o', 'StrictHostKeyChecking=yes', '-o', f'UserKnownHostsFile={lab.known_hosts}',
            '-o', f'ConnectTimeout={timeout}', '-o', 'ServerAliveInterval=2',
            '-o', 'ServerAliveCountMax=2', 'root@127.0.0.1', command]


def is_ready(machine: LabMachine, lab: LabPaths) -> bool:
    """A real SSH login (slirp accepts TCP even for a dead guest) that finds kdump armed."""
    try:
        return subprocess.run(_ssh_argv(machine, lab, READY_PROBE), capture_output=True,
                              timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _wait_ready(machine: LabMachine, lab: LabPaths, timeout: float, console_from: int) -> float:
    """Poll readiness; give up at once when the guest reports a boot error on its console
    (e.g. kdump failed to load: it would never become ready)."""
    started, console_log = time.monotonic(), Path(machine.machine_dir) / 'console.log'
    while not is_ready(machine, lab):
        with open(console_log, 'rb') as f:
            f.seek(console_from)
            errors = [line for line in f.read().splitlines() if line.startswith(b'VLAB: error')]
        if errors or time.monotonic() - started > timeout:
            why = errors[0].decode(errors='replace') if errors else f'not within {timeout:.0f} s'
            raise FatalInfraError(f'{machine.name} not ready (SSH + kdump armed): {why}; '
                                  f'see {console_log}')
        time.sleep(1.0)
    return time.monotonic() - started


# --- the commands -------------------------------------------------------------------------
def lab_up(hosts: int | None = None, arch: str = 'x86_64', *,
           kernels: tuple[str, ...] | None = None, ssh_port: int | None = None,
           bmc_port: int | None = None, ready_timeout: float = LAB_READY_TIMEOUT_S,
           log: Log = print) -> list[LabMachine]:
    """Bring the lab up (idempotent: an already running lab of this shape is reported).
    ``kernels``: one flavour per machine (default: ``hosts`` machines, all backports)."""
    kernels = machine_kernels(hosts, kernels)
    if arch not in NAME_PREFIXES:
        raise ConfigError(f'unknown arch {arch!r} (use x86_64 or aarch64)', field='--arch')
    lab = lab_paths()
    running = read_lab(lab)
    if running and all(_bmc_alive(m) for m in running):
        if tuple(m.kernel for m in running) != kernels or any(m.arch != arch for m in running):
            shape = ', '.join(f'{m.arch}/{m.kernel}' for m in running)
            raise ConfigError(f'the lab is up with {len(running)} machine(s) ({shape}); '
                              f'run `orchestrator lab down` first')
        log(f'lab already up: {", ".join(m.name for m in running)}')
        _power_on_and_wait(running, lab, ready_timeout, log)
        return running
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
    accel, accel_reason = verdict.accel, verdict.reason
    machines: list[LabMachine] = []
    try:
        for index, kernel in enumerate(kernels):
            name, manifest = f'{NAME_PREFIXES[arch]}-{index + 1}', images[kernel]
            port = ssh_port + index if ssh_port else free_tcp_port()
            machine_dir = _prepare_machine(lab, name, arch, port, manifest, accel)
            pid, udp_port = start_bmc_process(machine_dir, lab.bmc_password, BMC_USER,
                                              bmc_port + index if bmc_port else 0)
            machines.append(LabMachine(name, arch, str(machine_dir), port, udp_port, pid,
                                       accel, accel_reason, kernel, manifest.kernel_release))
            log(f'{name}: {kernel} kernel {manifest.kernel_release}, BMC on udp/{udp_port} '
                f'(pid {pid}), SSH on tcp/{port}, {accel}')
        write_known_hosts(machines, lab)
        write_lab_json(machines, lab)
        _power_on_and_wait(machines, lab, ready_timeout, log)
        write_inventory(machines, lab, paths.virtual_inventory())
    except BaseException:
        lab_down(log=lambda _: None)  # a failed `lab up` leaves no process behind
        raise
    log(f'inventory: {paths.virtual_inventory()}')
    return machines


def _power_on_and_wait(machines: list[LabMachine], lab: LabPaths, timeout: float,
                       log: Log) -> None:
    """Power on through each machine's BMC (as the orchestrator will), then wait for all."""
    console_from = {}
    for machine in machines:
        console_log = Path(machine.machine_dir) / 'console.log'
        console_from[machine.name] = console_log.stat().st_size if console_log.exists() else 0
        if _ipmi(machine, lab).set_power('on', wait=10) != {'powerstate': 'on'}:
            raise FatalInfraError(f'{machine.name}: BMC did not report power on')
    with ThreadPoolExecutor(max_workers=len(machines)) as pool:
        waited = pool.map(lambda m: _wait_ready(m, lab, timeout, console_from[m.name]), machines)
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
        power = 'BMC down'
        if _bmc_alive(machine):
            try:
                power = _ipmi(machine, lab).get_power()['powerstate']
            except Exception as error:  # a status table reports, it does not crash
                power = f'BMC error: {error}'
        rows.append({'machine': machine.name, 'kernel': machine.kernel_release or machine.kernel,
                     'power': power, 'ssh port': str(machine.ssh_port),
                     'bmc port': str(machine.bmc_port),
                     'accel': f'{machine.accel.upper()} ({machine.accel_reason[:48]})',
                     'ready': 'yes' if power == 'on' and is_ready(machine, lab) else 'no'})
    return rows


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
