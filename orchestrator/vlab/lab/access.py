"""How the lab reaches its machines: through the project's own transports, as a rack is.

Power goes through the machine's BMC with ``transports.ipmi.IpmiPower`` and readiness is a
real SSH login with ``transports.ssh.FabricShell`` (lab key, pinned host key), so ``lab up``
exercises the same code the orchestrator later drives the machines with. The readiness
probe is the guest's own flag (``/run/vlab-ready``, set by image/guest/rc.sh once kdump is
armed or deliberately off), not hostwait's kdump check, and the wait gives up at once when
the guest reports a boot error on its console (it would never become ready).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from orchestrator.errors import FatalInfraError, RetryableInfraError
from orchestrator.transports.ipmi import IpmiPower
from orchestrator.transports.ssh import FabricShell
from orchestrator.vlab.lab.layout import LabMachine, LabPaths, bmc_config, ssh_config

READY_PROBE = 'test -e /run/vlab-ready || grep -qx 1 /sys/kernel/kexec_crash_loaded'
# A probe gives up quickly: slirp accepts TCP for a guest still booting and stalls there.
PROBE_CONNECT_TIMEOUT_S = 5.0
PROBE_COMMAND_TIMEOUT_S = 15.0
PROBE_KEEPALIVE_S = 2
READY_POLL_S = 1.0
POWER_ON_CONFIRM_S = 10.0   # the lab BMC starts QEMU before it answers; a real one may lag


def machine_power(machine: LabMachine, lab: LabPaths) -> IpmiPower:
    return IpmiPower(bmc_config(machine, lab))


def machine_shell(machine: LabMachine, lab: LabPaths) -> FabricShell:
    """Root on the machine with the lab key and the pinned host key; short timeouts."""
    cfg = dataclasses.replace(ssh_config(machine, lab), connect_timeout=PROBE_CONNECT_TIMEOUT_S,
                              keepalive=PROBE_KEEPALIVE_S, command_timeout=PROBE_COMMAND_TIMEOUT_S)
    return FabricShell(cfg)


def power_on(machine: LabMachine, lab: LabPaths) -> None:
    """Power on through the BMC and see it report on. Asked twice: IPMI is UDP, and one lost
    login exchange must not fail a lab command."""
    power = machine_power(machine, lab)
    try:
        power.on()
    except RetryableInfraError:
        power.on()
    deadline = time.monotonic() + POWER_ON_CONFIRM_S
    while power.status() != 'on':
        if time.monotonic() > deadline:
            raise FatalInfraError(f'{machine.name}: BMC did not report power on')
        time.sleep(0.5)


def is_ready(machine: LabMachine, lab: LabPaths) -> bool:
    """A real SSH login (slirp accepts TCP even for a dead guest) that finds kdump armed.
    A refused host key or login is not "not yet": that ``FatalInfraError`` propagates."""
    shell = machine_shell(machine, lab)
    try:
        return _probe(shell)
    finally:
        shell.close()


def _probe(shell: FabricShell) -> bool:
    try:
        return shell.run(READY_PROBE, check=False).ok
    except RetryableInfraError:
        return False


def wait_ready(machine: LabMachine, lab: LabPaths, timeout: float, console_from: int) -> float:
    """Poll readiness; give up at once when the guest reports a boot error on its console
    (e.g. kdump failed to load). Returns the seconds waited."""
    started, console_log = time.monotonic(), Path(machine.machine_dir) / 'console.log'
    shell = machine_shell(machine, lab)   # reconnects by itself after a failed probe
    try:
        while not _probe(shell):
            errors = _console_errors(console_log, console_from)
            if errors or time.monotonic() - started > timeout:
                why = errors[0] if errors else f'not within {timeout:.0f} s'
                raise FatalInfraError(f'{machine.name} not ready (SSH + kdump armed): {why}; '
                                      f'see {console_log}')
            time.sleep(READY_POLL_S)
    finally:
        shell.close()
    return time.monotonic() - started


def _console_errors(console_log: Path, start: int) -> list[str]:
    with open(console_log, 'rb') as f:
        f.seek(start)
        return [line.decode(errors='replace') for line in f.read().splitlines()
                if line.startswith(b'VLAB: error')]
