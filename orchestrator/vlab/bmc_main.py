"""One BMC process: ``python -m orchestrator.vlab.bmc_main --machine-dir D --password-file F``.

One BMC per process because pyghmi's server cannot host several BMCs that one client
talks to (pyghmi-concurrency.md). The process owns its QEMU: SIGTERM stops the machine,
then the process exits. Files in the machine dir: ``bmc.log`` (log), ``bmc.port`` (the UDP
port the kernel picked), ``bmc.pid`` (written LAST: its presence means "listening").
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from orchestrator.vlab.bmc import BmcConfig, Machine, QemuBmc

log = logging.getLogger('orchestrator.vlab.bmc_main')


def run_bmc(config: BmcConfig, machine: Machine) -> None:
    """Serve until SIGTERM/SIGINT, then stop the machine and remove the pid/port files."""
    bmc = QemuBmc(config, machine)
    pid_file, port_file = config.machine_dir / 'bmc.pid', config.machine_dir / 'bmc.port'
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    port_file.write_text(f'{bmc.port}\n')
    pid_file.write_text(f'{os.getpid()}\n')
    try:
        bmc.serve(stop)
    finally:
        log.info('stopping: machine off, BMC exits')
        bmc.shutdown()
        for path in (pid_file, port_file):
            path.unlink(missing_ok=True)


def load_machine(machine_dir: Path) -> Machine:
    """The QemuMachine described by ``<machine_dir>/machine.json`` (written by lab up)."""
    from orchestrator.vlab.lab import machine_from_dir
    return machine_from_dir(machine_dir)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='bmc_main', description=__doc__.splitlines()[0])
    parser.add_argument('--machine-dir', required=True, type=Path)
    parser.add_argument('--user', default='admin')
    parser.add_argument('--password-file', required=True, type=Path,
                        help='file holding the BMC password (never on the command line)')
    parser.add_argument('--address', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=0, help='UDP port; 0 picks a free one')
    parser.add_argument('--sol-idle-timeout', type=float, default=65.0,
                        help='seconds of silence after which another client may take the SOL')
    parser.add_argument('--sol-trace', type=Path, help='append serial read times (bench)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine_dir = args.machine_dir.resolve()
    logging.basicConfig(filename=machine_dir / 'bmc.log', level=logging.INFO,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    config = BmcConfig(machine_dir=machine_dir, user=args.user,
                       password=args.password_file.read_text().strip(),
                       address=args.address, port=args.port,
                       sol_idle_timeout=args.sol_idle_timeout, sol_trace=args.sol_trace)
    try:
        run_bmc(config, load_machine(machine_dir))
    except Exception:
        log.exception('BMC failed')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
