"""What a lab keeps on disk (docs/DESIGN.md "Lab runtime layout"): the layout, lab.json,
the pinned known_hosts and the inventory file ("Inventory format", version 1); and how a
machine is reached (its ``SshConfig`` and ``BmcConfig``), the same for the inventory the
orchestrator reads and for the lab's own power-on and readiness checks (lab/access.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.config.model import BmcConfig, SecretRef, SshConfig
from orchestrator.vlab.image.kernels import DEFAULT_FLAVOUR

BMC_USER = 'admin'


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
    kernel: str = DEFAULT_FLAVOUR     # kernels.KERNEL_FLAVOURS; lab.json files from before it: backports
    kernel_release: str = ''          # `uname -r` of the image it boots
    kernel_args: tuple[str, ...] = ()  # extra guest kernel arguments (lab_up's kernel_args)
    ras: bool = False                 # aarch64 RAS platform (QEMU 11, GHES): firmware-first errors


def read_lab(lab: LabPaths) -> list[LabMachine]:
    try:
        data = json.loads(lab.lab_json.read_text())
    except (OSError, ValueError):
        return []
    return [LabMachine(**{**machine, 'kernel_args': tuple(machine.get('kernel_args', ()))})
            for machine in data['machines']]


def ssh_config(machine: LabMachine, lab: LabPaths) -> SshConfig:
    """Root over the forwarded port, with the lab key and the pinned host key."""
    return SshConfig(address='127.0.0.1', port=machine.ssh_port, user='root',
                     key_file=lab.client_key, known_hosts=lab.known_hosts)


def bmc_config(machine: LabMachine, lab: LabPaths) -> BmcConfig:
    return BmcConfig(address='127.0.0.1', port=machine.bmc_port, user=BMC_USER,
                     password=SecretRef(file=lab.bmc_password))


def write_known_hosts(machines: list[LabMachine], lab: LabPaths) -> None:
    from orchestrator.vlab.qemu.machine import known_hosts_line
    lines = [known_hosts_line(Path(m.machine_dir) / 'ssh_host_ed25519_key', '127.0.0.1',
                              m.ssh_port) for m in machines]
    lab.known_hosts.write_text('\n'.join(lines) + '\n')


def write_lab_json(machines: list[LabMachine], lab: LabPaths) -> None:
    data = {'arch': ','.join(dict.fromkeys(m.arch for m in machines)), 'hosts': len(machines),
            'machines': [asdict(m) for m in machines]}
    temporary = lab.lab_json.with_suffix('.tmp')
    temporary.write_text(json.dumps(data, indent=2) + '\n')
    temporary.replace(lab.lab_json)


#: the guest takes magic SysRq keys after a serial BREAK (Debian's default kernel.sysrq=438
#: refuses 'c': "sysrq: This sysrq operation is disabled.", arm64-ras-lab.md)
LAB_KERNEL_ARGS = ('sysrq_always_enabled',)


def host_features(arch: str, ras: bool = False) -> list[str]:
    # sol_break: the lab BMC turns a SOL break into a BREAK on the guest's UART (bmc/telnet.py)
    features = ['hwpoison_inject', 'hard_offline_page', 'kdump', 'sol', 'sol_break', 'sel']   # sel: vlab/bmc/sel.py
    if arch == 'x86_64':
        features += ['einj']    # the BMC plays the EINJ firmware (vlab/qemu/einj_table.py)
        # no mce_inject: its in-guest hw mode writes MCA bank MSRs, which QEMU does not take
        # (the injector refuses hosts under a hypervisor); QEMU 7.2 arm virt has no NMI source
        features += ['nmi']
        # the lab BMC's firmware raises machine checks (vlab/qemu/mce.py; the lab's x86 CPU
        # is "max,vendor=GenuineIntel", whose severity rules recover an SRAO error)
        features += ['qemu_mce']
    if ras:
        features += ['ghes']      # the BMC's firmware reports CPER memory errors (vlab/qemu/ghes.py)
    return features


def write_inventory(machines: list[LabMachine], lab: LabPaths, path: Path) -> None:
    """The inventory of docs/DESIGN.md ("Inventory format", version 1), absolute paths."""
    import yaml
    hosts = [_inventory_host(m, lab) for m in machines]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = '# written by `orchestrator lab up`; rewritten on every up\n'
    path.write_text(text + yaml.safe_dump({'version': 1, 'hosts': hosts}, sort_keys=False))


def _inventory_host(machine: LabMachine, lab: LabPaths) -> dict:
    ssh, bmc = ssh_config(machine, lab), bmc_config(machine, lab)
    return {
        'name': machine.name, 'arch': machine.arch, 'platform': f'qemu-{machine.arch}',
        'features': host_features(machine.arch, machine.ras), 'destructive': True,
        'ssh': {'address': ssh.address, 'port': ssh.port, 'user': ssh.user,
                'key_file': str(ssh.key_file), 'known_hosts': str(ssh.known_hosts)},
        'bmc': {'address': bmc.address, 'port': bmc.port, 'user': bmc.user,
                'password': {'file': str(bmc.password.file)}},
        'kdump': {'layout': 'debian', 'path': '/var/crash'},
    }
