"""``orchestrator lab up|down|status|console|build``: the virtual lab's lifecycle.

``lab up`` makes the per-lab keys once, each machine's disk and host key once, starts one
BMC process per machine (the BMC owns its QEMU) and powers every machine on THROUGH ITS
BMC over IPMI, exactly as the orchestrator will drive it later. It then waits for an SSH
login with the pinned host key and for the guest's readiness (kdump armed), and writes
``lab.json`` and the inventory (docs/DESIGN.md formats). Layout: docs/DESIGN.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from orchestrator import paths
from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.vlab.bmc_main import (process_alive, start_bmc_process, stop_bmc_process,
                                        write_machine_spec)

Log = Callable[[str], None]
BMC_USER = 'admin'
QEMU_BINARIES = {'x86_64': 'qemu-system-x86_64', 'aarch64': 'qemu-system-aarch64'}
QEMU_PACKAGES = {'x86_64': 'qemu-system-x86', 'aarch64': 'qemu-system-arm'}
NAME_PREFIXES = {'x86_64': 'vlab-x86', 'aarch64': 'vlab-arm'}
MEMORY_MB = 1024
DISK_NEED_BYTES = 512 << 20      # per machine: dumps land on a sparse disk; RAM is not disk
READY_TIMEOUT_SECONDS = 300.0    # TCG boot is 7-8 s alone, 15 s with 3 guests on 2 cores;
                                 # arm64 kdump load adds seconds: leave room for a busy host
READY_PROBE = 'test -e /run/vlab-ready || grep -qx 1 /sys/kernel/kexec_crash_loaded'


@dataclass(frozen=True)
class LabPaths:
    """The lab runtime layout of docs/DESIGN.md."""
    root: Path

    keys = property(lambda self: self.root / 'keys')
    client_key = property(lambda self: self.keys / 'id_ed25519')
    known_hosts = property(lambda self: self.keys / 'known_hosts')
    bmc_password = property(lambda self: self.keys / 'bmc-password')
    lab_json = property(lambda self: self.root / 'lab.json')

    def machine_dir(self, name: str) -> Path:
        return self.root / 'machines' / name


@dataclass(frozen=True)
class LabMachine:
    name: str
    arch: str
    machine_dir: str
    ssh_port: int
    bmc_port: int
    bmc_pid: int
    accel: str
    accel_reason: str


def lab_paths() -> LabPaths:
    return LabPaths(paths.lab_dir())


def read_lab(lab: LabPaths | None = None) -> list[LabMachine]:
    lab = lab or lab_paths()
    try:
        data = json.loads(lab.lab_json.read_text())
    except (OSError, ValueError):
        return []
    return [LabMachine(**machine) for machine in data['machines']]


def _bmc_alive(machine: LabMachine) -> bool:
    return process_alive(Path(machine.machine_dir) / 'bmc.pid', 'orchestrator.vlab.bmc_main') is not None


# --- checks on the request (bad input -> ConfigError, one line) -----------------------------
def _check_request(hosts: int, arch: str, ssh_port: int | None, bmc_port: int | None,
                   lab: LabPaths) -> None:
    if shutil.which(QEMU_BINARIES[arch]) is None:
        raise ConfigError(f'missing QEMU binary {QEMU_BINARIES[arch]} '
                          f'(apt-get install {QEMU_PACKAGES[arch]})')
    lab.root.mkdir(parents=True, exist_ok=True)
    free, need = shutil.disk_usage(lab.root).free, DISK_NEED_BYTES * hosts
    if free < need:
        raise ConfigError(f'no free disk: {free >> 20} MiB free under {lab.root}, '
                          f'{need >> 20} MiB needed')
    for base, kind in ((ssh_port, socket.SOCK_STREAM), (bmc_port, socket.SOCK_DGRAM)):
        for port in range(base, base + hosts) if base else ():
            if not _port_free(port, kind):
                what = 'SSH' if kind == socket.SOCK_STREAM else 'BMC'
                raise ConfigError(f'{what} port {port} is in use on 127.0.0.1')


def _port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


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
    from orchestrator.vlab.machine import create_disk, ensure_host_key
    machine_dir = lab.machine_dir(name)
    create_disk(machine_dir, ensure_host_key(machine_dir), Path(f'{lab.client_key}.pub'))
    write_machine_spec(machine_dir, name=name, arch=arch, ssh_port=ssh_port, memory_mb=MEMORY_MB,
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
        except IpmiException:  # once seen: a re-login after > 45 s idle timed out; see report
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
def lab_up(hosts: int = 1, arch: str = 'x86_64', *, ssh_port: int | None = None,
           bmc_port: int | None = None, ready_timeout: float = READY_TIMEOUT_SECONDS,
           log: Log = print) -> list[LabMachine]:
    """Bring the lab up (idempotent: an already running lab of this shape is reported)."""
    if arch not in QEMU_BINARIES:
        raise ConfigError(f'unknown arch {arch!r} (use x86_64 or aarch64)', field='--arch')
    if hosts < 1:
        raise ConfigError(f'--hosts must be at least 1, not {hosts}', field='--hosts')
    lab = lab_paths()
    running = read_lab(lab)
    if running and all(_bmc_alive(m) for m in running):
        if len(running) != hosts or any(m.arch != arch for m in running):
            raise ConfigError(f'the lab is up with {len(running)} {running[0].arch} machine(s); '
                              f'run `orchestrator lab down` first')
        log(f'lab already up: {", ".join(m.name for m in running)}')
        _power_on_and_wait(running, lab, ready_timeout, log)
        return running
    if running:
        log('lab partly down (a BMC died): restarting it')
        lab_down(log=lambda _: None)
    _check_request(hosts, arch, ssh_port, bmc_port, lab)
    from orchestrator.vlab.image import build_image
    manifest = build_image(arch, log=log)
    _ensure_lab_secrets(lab)
    from orchestrator.vlab.accel import choose_accel
    verdict = choose_accel(manifest)  # KVM only if a real guest boots with it (cached)
    accel, accel_reason = verdict.accel, verdict.reason
    machines: list[LabMachine] = []
    try:
        for index in range(hosts):
            name = f'{NAME_PREFIXES[arch]}-{index + 1}'
            port = ssh_port + index if ssh_port else _free_tcp_port()
            machine_dir = _prepare_machine(lab, name, arch, port, manifest, accel)
            pid, udp_port = start_bmc_process(machine_dir, lab.bmc_password, BMC_USER,
                                              bmc_port + index if bmc_port else 0)
            machines.append(LabMachine(name, arch, str(machine_dir), port, udp_port, pid,
                                       accel, accel_reason))
            log(f'{name}: BMC on udp/{udp_port} (pid {pid}), SSH on tcp/{port}, {accel}')
        _write_known_hosts(machines, lab)
        _write_lab_json(machines, lab)
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


def _write_known_hosts(machines: list[LabMachine], lab: LabPaths) -> None:
    from orchestrator.vlab.machine import known_hosts_line
    lines = [known_hosts_line(Path(m.machine_dir) / 'ssh_host_ed25519_key', '127.0.0.1',
                              m.ssh_port) for m in machines]
    lab.known_hosts.write_text('\n'.join(lines) + '\n')


def _write_lab_json(machines: list[LabMachine], lab: LabPaths) -> None:
    data = {'arch': machines[0].arch, 'hosts': len(machines),
            'machines': [asdict(m) for m in machines]}
    temporary = lab.lab_json.with_suffix('.tmp')
    temporary.write_text(json.dumps(data, indent=2) + '\n')
    temporary.replace(lab.lab_json)


def host_features(arch: str) -> list[str]:
    features = ['hwpoison_inject', 'hard_offline_page', 'kdump', 'sol']
    if arch == 'x86_64':
        features += ['mce_inject', 'nmi']  # QEMU 7.2 arm virt has no NMI source
    return features


def write_inventory(machines: list[LabMachine], lab: LabPaths, path: Path) -> None:
    """The inventory of docs/DESIGN.md ("Inventory format", version 1), absolute paths."""
    import yaml
    hosts = [{
        'name': m.name, 'arch': m.arch, 'platform': f'qemu-{m.arch}',
        'features': host_features(m.arch), 'destructive': True,
        'ssh': {'address': '127.0.0.1', 'port': m.ssh_port, 'user': 'root',
                'key_file': str(lab.client_key), 'known_hosts': str(lab.known_hosts)},
        'bmc': {'address': '127.0.0.1', 'port': m.bmc_port, 'user': BMC_USER,
                'password': {'file': str(lab.bmc_password)}},
        'kdump': {'layout': 'debian', 'path': '/var/crash'},
    } for m in machines]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = '# written by `orchestrator lab up`; rewritten on every up\n'
    path.write_text(text + yaml.safe_dump({'version': 1, 'hosts': hosts}, sort_keys=False))


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
    return lab_up(len(running), running[0].arch, log=log) if running else lab_up(log=log)


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
        rows.append({'machine': machine.name, 'power': power, 'ssh port': str(machine.ssh_port),
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


# --- CLI ----------------------------------------------------------------------------------
def _cmd_up(args: argparse.Namespace) -> int:
    lab_up(args.hosts, args.arch, ssh_port=args.ssh_port, bmc_port=args.bmc_port)
    return _cmd_status(args)


def _cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    rows = lab_status()
    if not rows:
        print('lab is down')
        return 0
    table = Table(*rows[0], title=f'virtual lab ({paths.lab_dir()})')
    for row in rows:
        table.add_row(*row.values())
    Console().print(table)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from orchestrator.vlab.image import build_image  # ConfigError on an unknown arch
    build_image(args.arch, refresh=args.refresh, force=args.force)
    return 0


def add_lab_commands(subparsers) -> None:
    """``orchestrator lab up|down|status|console|build``."""
    lab = subparsers.add_parser('lab', help='the virtual lab: QEMU machines behind IPMI BMCs')
    sub = lab.add_subparsers(dest='lab_command', required=True, metavar='ACTION')
    up = sub.add_parser('up', help='start the lab (default: one x86_64 machine)')
    up.add_argument('--hosts', type=int, default=1, help='number of machines (default 1)')
    up.add_argument('--arch', default='x86_64', help='x86_64 (default) or aarch64')
    up.add_argument('--ssh-port', type=int, help='first SSH port (default: free ports)')
    up.add_argument('--bmc-port', type=int, help='first BMC UDP port (default: free ports)')
    up.set_defaults(func=_cmd_up)
    sub.add_parser('down', help='stop every machine and BMC').set_defaults(
        func=lambda args: lab_down() or 0)
    sub.add_parser('status', help='table of machines').set_defaults(func=_cmd_status)
    console = sub.add_parser('console', help='interactive serial console (SOL); ~. leaves')
    console.add_argument('name')
    console.set_defaults(func=lambda args: lab_console(args.name) or 0)
    build = sub.add_parser('build', help='build or reuse the guest image')
    build.add_argument('--arch', default='x86_64')
    build.add_argument('--refresh', action='store_true', help='refresh the private apt lists')
    build.add_argument('--force', action='store_true', help='rebuild even if nothing changed')
    build.set_defaults(func=_cmd_build)
