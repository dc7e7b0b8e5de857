"""Mixed labs without QEMU: what ``lab up --arch/--hosts/--kernels`` means (lab/plan.py), the
one-line errors for bad values (exit status 2), and the layout ``lab up`` writes for a mixed
lab (names, ports, one accel verdict per arch, lab.json, one inventory), with the image
builder, the BMC processes and the boot replaced by fakes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from orchestrator.errors import ConfigError
from orchestrator.faces.cli.main import main
from orchestrator.vlab.lab import checks as lab_checks
from orchestrator.vlab.lab import lifecycle as lab
from orchestrator.vlab.lab.plan import lab_plan, machine_slots, parse_arch_spec

X86, ARM = ('x86_64', 'backports'), ('aarch64', 'backports')


@pytest.mark.parametrize('arch, hosts, kernels, plan', [
    ('x86_64', None, None, (X86,)),
    ('aarch64', 2, None, (ARM, ARM)),
    ('x86_64,aarch64', None, None, (X86, ARM)),
    ('aarch64,x86_64', None, None, (ARM, X86)),                     # the order given
    ('x86_64,aarch64', 2, None, (X86, X86, ARM, ARM)),               # --hosts is per arch
    ('x86_64=2,aarch64=1', None, None, (X86, X86, ARM)),
    (' x86_64 = 2 , aarch64', None, None, (X86, X86, ARM)),
    ('x86_64,aarch64', None, ('backports', 'bookworm'),
     (X86, ('x86_64', 'bookworm'), ARM, ('aarch64', 'bookworm'))),   # --kernels is per arch
])
def test_arch_hosts_and_kernels_make_the_plan(arch, hosts, kernels, plan):
    assert lab_plan(arch, hosts, kernels) == plan


def test_machines_are_numbered_within_their_arch():
    names = [name for name, _, _ in machine_slots(lab_plan('x86_64=2,aarch64=2', None, None))]
    assert names == ['vlab-x86-1', 'vlab-x86-2', 'vlab-arm-1', 'vlab-arm-2']
    assert parse_arch_spec('aarch64=3') == (('aarch64', 3),)


@pytest.mark.parametrize('arch, hosts, kernels, message', [
    ('sparc', None, None, "unknown arch 'sparc' in 'sparc'"),
    ('x86_64,sparc', None, None, "unknown arch 'sparc'"),
    ('x86_64,', None, None, "unknown arch ''"),
    ('x86_64;aarch64', None, None, "unknown arch 'x86_64;aarch64'"),
    ('x86_64,x86_64=2', None, None, 'names x86_64 twice'),
    ('x86_64=0', None, None, "x86_64='0' in 'x86_64=0' is not a machine count"),
    ('x86_64=two', None, None, "x86_64='two' in 'x86_64=two' is not"),
    ('x86_64=', None, None, "x86_64='' in 'x86_64=' is not"),
    ('x86_64=2,aarch64', 1, None, '--arch x86_64=2 and --hosts 1: give the count once'),
    ('x86_64,aarch64', 0, None, '--hosts must be at least 1'),
    ('aarch64=1', None, ('backports', 'bookworm'), '--arch aarch64=1 but 2 kernel'),
])
def test_bad_arch_values_are_one_line_config_errors(arch, hosts, kernels, message):
    with pytest.raises(ConfigError, match=message) as error:
        lab_plan(arch, hosts, kernels)
    assert '\n' not in str(error.value)


def test_bad_arch_on_the_command_line_is_exit_2_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('ORCH_LAB_DIR', str(tmp_path / 'lab'))
    assert main(['lab', 'up', '--arch', 'x86_64,arm64']) == 2
    err = capsys.readouterr().err
    assert err.startswith("orchestrator: error: --arch: unknown arch 'arm64' in 'x86_64,arm64'") and err.count('\n') == 1
    assert not (tmp_path / 'lab').exists()


def test_a_lab_folder_with_a_comma_is_bad_input(tmp_path, monkeypatch):
    """QEMU reads ``path=/a,b/serial.sock`` as two options; seen as "power on: Unspecified"."""
    monkeypatch.setenv('ORCH_LAB_DIR', str(tmp_path / 'x86_64,aarch64'))
    with pytest.raises(ConfigError, match='has a comma in its path'):
        lab.lab_up(arch='x86_64,aarch64', log=lambda _: None)
    assert not (tmp_path / 'x86_64,aarch64').exists()


@pytest.fixture
def fake_machines(tmp_path, monkeypatch):
    """``lab up`` with everything that would start a process or build an image faked: what
    is left is the real planning, naming, ports and files."""
    monkeypatch.setenv('ORCH_LAB_DIR', str(tmp_path / 'lab'))
    monkeypatch.setenv('ORCH_VIRTUAL_INVENTORY', str(tmp_path / 'virtual.yaml'))
    built, pids = [], iter(range(1000, 2000))
    monkeypatch.setattr('orchestrator.vlab.image.build.build_image', lambda arch, kernel, log: built.append(
        (arch, kernel)) or SimpleNamespace(kernel_release=f'7.3-{arch}', directory=tmp_path))
    monkeypatch.setattr('orchestrator.vlab.qemu.accel.choose_accel', lambda image: SimpleNamespace(
        accel='tcg', reason=f'no KVM for {image.kernel_release}'))
    monkeypatch.setattr(lab_checks.shutil, 'which', lambda name: f'/usr/bin/{name}')
    monkeypatch.setattr(lab, '_prepare_machine', lambda lab_, name, *rest: lab_.machine_dir(name))
    monkeypatch.setattr(lab, 'start_bmc_process', lambda machine_dir, *rest: (next(pids), rest[-1]))
    monkeypatch.setattr(lab, 'write_known_hosts', lambda machines, lab_: None)
    monkeypatch.setattr(lab, '_power_on_and_wait', lambda machines, *rest: None)
    monkeypatch.setattr(lab, '_bmc_alive', lambda machine: True)
    return built


def test_a_mixed_lab_builds_both_images_then_writes_one_lab_and_one_inventory(fake_machines, tmp_path):
    machines = lab.lab_up(arch='x86_64=2,aarch64=1', ssh_port=40000, bmc_port=50000, log=lambda _: None)
    assert fake_machines == [X86, ARM], 'each image once, all of them before a machine starts'
    assert [(m.name, m.arch, m.ssh_port, m.bmc_port) for m in machines] == [
        ('vlab-x86-1', 'x86_64', 40000, 50000), ('vlab-x86-2', 'x86_64', 40001, 50001),
        ('vlab-arm-1', 'aarch64', 40002, 50002)]
    assert [m.accel_reason for m in machines] == ['no KVM for 7.3-x86_64'] * 2 + ['no KVM for 7.3-aarch64']
    assert lab.read_lab() == machines
    hosts = yaml.safe_load((tmp_path / 'virtual.yaml').read_text())['hosts']
    assert [(h['name'], h['arch'], h['platform']) for h in hosts] == [
        ('vlab-x86-1', 'x86_64', 'qemu-x86_64'), ('vlab-x86-2', 'x86_64', 'qemu-x86_64'),
        ('vlab-arm-1', 'aarch64', 'qemu-aarch64')]
    assert 'nmi' in hosts[0]['features'] and 'nmi' not in hosts[2]['features']
    argv, _ = lab.console_command('vlab-arm-1')       # `lab console NAME` finds either arch
    assert argv[argv.index('-p') + 1] == '50002'


def test_a_running_mixed_lab_is_kept_by_run_and_refused_for_another_shape(fake_machines, monkeypatch):
    machines = lab.lab_up(arch='x86_64,aarch64', log=lambda _: None)
    assert lab.ensure_up(log=lambda _: None) == machines, '`orchestrator run` without -i keeps both arches'
    assert lab.lab_up(arch='x86_64,aarch64', log=lambda _: None) == machines
    with pytest.raises(ConfigError, match=r'up with 2 machine\(s\) \(x86_64/backports, aarch64/backports\)'):
        lab.lab_up(arch='x86_64', log=lambda _: None)
    monkeypatch.setattr(lab, '_power_state', lambda machine, lab_: 'off')   # no BMC to ask
    assert [(row['machine'], row['arch']) for row in lab.lab_status()] == [
        ('vlab-x86-1', 'x86_64'), ('vlab-arm-1', 'aarch64')]
