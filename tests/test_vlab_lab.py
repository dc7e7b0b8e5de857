"""``lab up/down/status/console`` and the lab BMC end to end on real QEMU (``-m vlab``),
plus the one-line bad-input errors (no QEMU needed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_vlab_bmc import PtyProcess, wait_until  # noqa: E402

from orchestrator.errors import ConfigError  # noqa: E402
from orchestrator.vlab.lab import checks as lab_checks  # noqa: E402
from orchestrator.vlab.lab import lifecycle as lab  # noqa: E402


@pytest.fixture
def empty_lab(tmp_path, monkeypatch):
    monkeypatch.setenv('ORCH_LAB_DIR', str(tmp_path / 'lab'))
    monkeypatch.setenv('ORCH_VIRTUAL_INVENTORY', str(tmp_path / 'virtual.yaml'))
    return tmp_path


def test_unknown_arch_is_bad_input(empty_lab):
    with pytest.raises(ConfigError, match="unknown arch 'sparc'"):
        lab.lab_up(arch='sparc')


def test_port_in_use_is_bad_input(empty_lab):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        with pytest.raises(ConfigError, match=f'SSH port {taken.getsockname()[1]} is in use'):
            lab.lab_up(ssh_port=taken.getsockname()[1])


def test_missing_qemu_binary_is_bad_input(empty_lab, monkeypatch):
    monkeypatch.setattr(lab_checks.shutil, 'which', lambda name: None)
    with pytest.raises(ConfigError, match='missing QEMU binary qemu-system-aarch64'):
        lab.lab_up(arch='aarch64')


def test_no_free_disk_is_bad_input(empty_lab, monkeypatch):
    usage = namedtuple('usage', 'total used free')
    monkeypatch.setattr(lab_checks.shutil, 'disk_usage', lambda path: usage(1, 1, 0))
    with pytest.raises(ConfigError, match='no free disk'):
        lab.lab_up()


def test_unknown_or_mismatched_kernels_are_bad_input(empty_lab):
    with pytest.raises(ConfigError, match="unknown guest kernel 'sid'"):
        lab.lab_up(kernels=('backports', 'sid'))
    with pytest.raises(ConfigError, match='--hosts 3 but 2 kernel'):
        lab.lab_up(hosts=3, kernels=('backports', 'bookworm'))
    assert lab_checks.parse_kernel_list('backports,bookworm') == ('backports', 'bookworm')
    assert lab_checks.machine_kernels(2, None) == ('backports', 'backports')


def test_kernel_args_for_an_unknown_machine_or_with_blanks_are_bad_input(empty_lab):
    with pytest.raises(ConfigError, match='no machine of this lab'):
        lab.lab_up(hosts=1, kernel_args={'vlab-x86-2': ('lockdown=integrity',)}, log=lambda _: None)
    with pytest.raises(ConfigError, match='single words'):
        lab.lab_up(hosts=1, kernel_args={'vlab-x86-1': ('lockdown=integrity panic=1',)}, log=lambda _: None)


def test_lab_json_without_kernel_fields_reads_as_backports(empty_lab):
    lab.lab_paths().root.mkdir(parents=True)
    old = {'name': 'vlab-x86-1', 'arch': 'x86_64', 'machine_dir': '/nowhere', 'ssh_port': 1,
           'bmc_port': 2, 'bmc_pid': 3, 'accel': 'tcg', 'accel_reason': 'test'}
    lab.lab_paths().lab_json.write_text(json.dumps({'machines': [old]}))
    machine, = lab.read_lab()
    assert (machine.kernel, machine.kernel_release) == ('backports', '')


def test_lab_subcommands_raise_config_error_for_the_cli(empty_lab):
    import argparse
    parser = argparse.ArgumentParser(prog='orchestrator')
    from orchestrator.faces.cli.lab import add_lab_commands
    add_lab_commands(parser.add_subparsers(dest='command', required=True))
    for argv in (['lab', 'up', '--arch', 'sparc'], ['lab', 'build', '--arch', 'sparc'],
                 ['lab', 'up', '--kernels', 'backports,,bookworm'], ['lab', 'build', '--kernel', 'sid'],
                 ['lab', 'console', 'nope']):
        args = parser.parse_args(argv)
        with pytest.raises(ConfigError) as error:  # the CLI maps ConfigError to exit status 2
            args.func(args)
        assert '\n' not in str(error.value)


def test_down_on_a_lab_that_never_was_is_a_no_op(empty_lab):
    lab.lab_down(log=lambda _: None)
    lab.lab_down(log=lambda _: None)
    assert lab.lab_status() == []


# --- end to end: one x86_64 machine --------------------------------------------------------
def our_qemu_pids(machine_dir: str) -> list[int]:
    found = subprocess.run(['pgrep', '-f', f'qemu-system.*{machine_dir}/'], capture_output=True,
                           text=True).stdout.split()
    return [int(pid) for pid in found]


@pytest.fixture(scope='module')
def running_lab(tmp_path_factory):
    base = tmp_path_factory.mktemp('vlab')
    saved = {k: os.environ.get(k) for k in ('ORCH_LAB_DIR', 'ORCH_VIRTUAL_INVENTORY')}
    os.environ.update(ORCH_LAB_DIR=str(base / 'lab'), ORCH_VIRTUAL_INVENTORY=str(base / 'v.yaml'))
    try:
        machine, = lab.lab_up(hosts=1, arch='x86_64')
        yield machine
    finally:
        lab.lab_down(log=lambda _: None)  # always: no QEMU or BMC outlives the tests
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def ipmi(machine, *args) -> subprocess.CompletedProcess:
    argv = ['ipmitool', '-I', 'lanplus', '-H', '127.0.0.1', '-p', str(machine.bmc_port),
            '-U', 'admin', '-E', *args]
    env = {**os.environ, 'IPMI_PASSWORD': lab._password(lab.lab_paths()).decode()}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def console_text(machine) -> str:
    return (Path(machine.machine_dir) / 'console.log').read_text(errors='replace')


def wait_ready(machine, timeout=180):
    wait_until(lambda: lab.is_ready(machine, lab.lab_paths()), timeout, 'SSH + kdump armed', 1)


@pytest.mark.vlab
def test_lab_up_writes_inventory_and_is_idempotent(running_lab):
    from orchestrator.config.inventory import load_inventory
    host, = load_inventory(os.environ['ORCH_VIRTUAL_INVENTORY']).hosts
    assert (host.name, host.arch, host.platform, host.destructive) == \
        ('vlab-x86-1', 'x86_64', 'qemu-x86_64', True)
    assert host.features == {'hwpoison_inject', 'hard_offline_page', 'kdump', 'sol', 'sol_break', 'sel', 'nmi', 'einj',
                             'qemu_mce'}
    assert (host.ssh.port, host.bmc.port) == (running_lab.ssh_port, running_lab.bmc_port)
    assert host.bmc.password.resolve() == lab._password(lab.lab_paths()).decode()
    assert stat.S_IMODE(os.stat(lab.lab_paths().bmc_password).st_mode) == 0o600
    assert f'[127.0.0.1]:{running_lab.ssh_port} ssh-ed25519 ' in host.ssh.known_hosts.read_text()
    again, = lab.lab_up(hosts=1, arch='x86_64', log=lambda _: None)
    assert again == running_lab, 'a second up reports the running lab'
    row, = lab.lab_status()
    assert (row['power'], row['ready'], row['accel'][:3]) == ('on', 'yes', 'TCG')


@pytest.mark.vlab
def test_ipmitool_power_off_on_cycle_reset_diag(running_lab):
    assert ipmi(running_lab, 'power', 'status').stdout.strip() == 'Chassis Power is on'
    assert ipmi(running_lab, 'power', 'off').returncode == 0
    assert ipmi(running_lab, 'power', 'status').stdout.strip() == 'Chassis Power is off'
    assert our_qemu_pids(running_lab.machine_dir) == [], 'hard off leaves no QEMU process'
    assert ipmi(running_lab, 'power', 'on').returncode == 0
    assert len(our_qemu_pids(running_lab.machine_dir)) == 1
    assert 'Cycle' in ipmi(running_lab, 'power', 'cycle').stdout
    wait_ready(running_lab)
    assert 'Reset' in ipmi(running_lab, 'power', 'reset').stdout
    wait_ready(running_lab)
    assert 'Diag' in ipmi(running_lab, 'chassis', 'power', 'diag').stdout
    wait_until(lambda: 'NMI received' in console_text(running_lab), 20, 'the NMI on the console')


@pytest.mark.vlab
def test_ipmitool_sol_shows_the_reset_boot(running_lab):
    argv, env = lab.console_command(running_lab.name)
    os.environ['IPMI_PASSWORD'] = env['IPMI_PASSWORD']
    sol = PtyProcess(argv)
    try:
        sol.expect(rb'SOL Session operational', 15)
        assert 'Reset' in ipmi(running_lab, 'power', 'reset').stdout
        sol.expect(rb'Linux version 7\.3\.4', 60)
        sol.expect(rb'VLAB: ready', 120)
        sol.send(b'\runame -r\r')
        sol.expect(rb'\n7\.3\.4\+deb13-cloud-amd64', 30)
        sol.send(b'\r~.')
    finally:
        os.environ.pop('IPMI_PASSWORD', None)
        assert sol.close() == 0
    assert 'Linux version 7.3.4' in console_text(running_lab)


@pytest.mark.vlab
def test_pyghmi_client_power_and_sol(running_lab):
    from pyghmi.ipmi.console import Console
    from pyghmi.ipmi.private.session import Session
    import threading
    power = lab.machine_power(running_lab, lab.lab_paths())
    assert power.status() == 'on'
    received = bytearray()
    console = Console(bmc='127.0.0.1', port=running_lab.bmc_port, userid=b'admin',
                      password=lab._password(lab.lab_paths()), force=True,
                      iohandler=lambda d: None if isinstance(d, dict) else received.extend(d))
    stop = threading.Event()
    threading.Thread(target=lambda: [Session.wait_for_rsp(0.05) for _ in
                                     iter(stop.is_set, True)], daemon=True).start()
    try:
        wait_until(lambda: console.activated, 15, 'SOL activation')
        power.reset()
        wait_until(lambda: b'Linux version 7.3.4' in received, 60, 'boot log over SOL')
        wait_until(lambda: b'VLAB: ready' in received, 120, 'VLAB: ready over SOL')
    finally:
        stop.set()
        console.close()
    wait_ready(running_lab)


@pytest.mark.vlab
def test_a_guest_reboot_is_a_new_qemu_with_power_on_throughout(running_lab):
    """cold_reboot.py: the guest's reboot ends its QEMU (RAM back to the host) and the
    machine boots in a new one; the BMC never reports off and the console follows."""
    import time
    power = lab.machine_power(running_lab, lab.lab_paths())
    before, = our_qemu_pids(running_lab.machine_dir)
    console_from = len(console_text(running_lab))
    shell = lab.machine_shell(running_lab, lab.lab_paths())
    fired = shell.run("nohup setsid sh -c 'sleep 1; reboot -f' </dev/null >/dev/null 2>&1 &",
                      timeout=30, check=False)
    shell.close()
    assert fired.ok, fired.stderr
    states, deadline = set(), time.monotonic() + 120
    while our_qemu_pids(running_lab.machine_dir) in ([before], []) and time.monotonic() < deadline:
        states.add(power.status())   # polled through the switch-over
    after, = our_qemu_pids(running_lab.machine_dir)
    assert after != before and states == {'on'}, states
    wait_ready(running_lab)
    assert 'VLAB: ready' in console_text(running_lab)[console_from:], 'console.log follows the new QEMU'


@pytest.mark.vlab
def test_bmc_whose_qemu_was_killed_reports_off_promptly(running_lab):
    import time
    power = lab.machine_power(running_lab, lab.lab_paths())
    assert power.status() == 'on'   # logged in before the clock starts, as the old client was
    pid, = our_qemu_pids(running_lab.machine_dir)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not our_qemu_pids(running_lab.machine_dir), 10, 'QEMU to die')
    started = time.monotonic()
    assert power.status() == 'off'
    assert time.monotonic() - started < 1.0
    assert ipmi(running_lab, 'power', 'status').stdout.strip() == 'Chassis Power is off'
    power.on()
    wait_until(lambda: power.status() == 'on', 10, 'power on')
    wait_ready(running_lab)


@pytest.mark.vlab
def test_lab_down_leaves_no_process(running_lab):
    bmc_pid = running_lab.bmc_pid
    lab.lab_down(log=lambda _: None)
    assert our_qemu_pids(running_lab.machine_dir) == []
    assert not Path(f'/proc/{bmc_pid}').exists() or \
        'Z' in Path(f'/proc/{bmc_pid}/stat').read_text().split(')')[1][:3]
    assert lab.lab_status() == []
    lab.lab_down(log=lambda _: None)  # idempotent
