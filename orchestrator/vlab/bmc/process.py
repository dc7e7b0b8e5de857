"""One BMC process: ``python -m orchestrator.vlab.bmc.process --machine-dir D --password-file F``.

One BMC per process because pyghmi's server cannot host several BMCs that one client
talks to (pyghmi-concurrency.md). The process owns its QEMU: SIGTERM stops the machine,
then the process exits. Files in the machine dir: ``bmc.log`` (log), ``bmc.port`` (the UDP
port the kernel picked), ``bmc.pid`` (written LAST: its presence means "listening"), and
``bmc.reply_delay``, read while running: a fault knob for drills (fault_knobs.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from orchestrator.errors import FatalInfraError
from orchestrator.vlab.bmc.fault_knobs import install_reply_delay
from orchestrator.vlab.bmc.server import BmcConfig, Machine, QemuBmc

#: what ``python -m`` runs, and so what a live BMC's command line contains
BMC_MODULE = 'orchestrator.vlab.bmc.process'
log = logging.getLogger(BMC_MODULE)


def run_bmc(config: BmcConfig, machine: Machine) -> None:
    """Serve until SIGTERM/SIGINT, then stop the machine and remove the pid/port files."""
    install_reply_delay(config.machine_dir)     # fault drills only: bmc.reply_delay, default none
    bmc = QemuBmc(config, machine)
    if getattr(machine, 'adopt', lambda: False)():
        log.info('adopted the running QEMU of %s (its previous BMC died)', config.machine_dir.name)
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


def process_alive(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process lives and its command line contains
    ``marker`` (a recycled pid belonging to something else does not count)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f'/proc/{pid}/cmdline').read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker.encode() in cmdline.replace(b'\0', b' ') else None


def bmc_alive(machine_dir: Path) -> bool:
    return process_alive(machine_dir / 'bmc.pid', BMC_MODULE) is not None


def start_bmc_process(machine_dir: Path, password_file: Path, user: str, port: int = 0,
                      timeout: float = 15.0) -> tuple[int, int]:
    """Spawn one BMC process for ``machine_dir``; return (pid, UDP port) once it listens."""
    for stale in ('bmc.pid', 'bmc.port'):
        (machine_dir / stale).unlink(missing_ok=True)
    argv = [sys.executable, '-m', BMC_MODULE, '--machine-dir', str(machine_dir),
            '--password-file', str(password_file), '--user', user, '--port', str(port)]
    if os.environ.get('ORCH_VLAB_SOL_TRACE'):  # bench/bench_vlab_bmc.py: SOL latency
        argv += ['--sol-trace', str(machine_dir / 'sol-trace.log')]
    with open(machine_dir / 'bmc.log', 'ab') as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True)  # a Ctrl-C in the lab's terminal must not kill the lab
    deadline = time.monotonic() + timeout
    while not (machine_dir / 'bmc.pid').exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (machine_dir / 'bmc.log').read_text(errors='replace').strip().splitlines()[-1:]
            raise FatalInfraError(f'BMC for {machine_dir.name} did not start: {" ".join(tail)}')
        time.sleep(0.05)
    return proc.pid, int((machine_dir / 'bmc.port').read_text())


def stop_bmc_process(machine_dir: Path, timeout: float = 20.0) -> bool:
    """SIGTERM the BMC (it powers its QEMU off first), SIGKILL if it hangs; then make sure
    no QEMU of this machine survives (a BMC killed with -9 cannot stop its QEMU).
    Returns whether anything was running."""
    stopped = False
    for pid_name, marker in (('bmc.pid', BMC_MODULE), ('qemu.pid', 'qemu-system')):
        pid = process_alive(machine_dir / pid_name, marker)
        if pid is None:
            continue
        stopped = True
        os.kill(pid, signal.SIGTERM)
        if not _wait_exited(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_exited(pid, timeout)
    return stopped


def _wait_exited(pid: int, timeout: float) -> bool:
    """Until ``pid`` has exited (reaped if it is our child, or a zombie of someone else's).
    Not "until its cmdline is empty": an exiting process clears that while still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not our child: look at its state
            try:
                state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
            except (OSError, IndexError):
                return True
            if state in ('Z', 'X'):
                return True
        time.sleep(0.02)
    return False


def write_machine_spec(machine_dir: Path, **spec) -> None:
    """``machine.json``: the ``MachineSpec`` fields plus ``image_manifest`` (a path); lab up
    writes it, the BMC process builds its ``QemuMachine`` from it."""
    (machine_dir / 'machine.json').write_text(json.dumps(spec, indent=2) + '\n')


def load_machine(machine_dir: Path) -> Machine:
    from orchestrator.vlab.image.manifest import ImageManifest
    from orchestrator.vlab.qemu.machine import MachineSpec, QemuMachine
    spec = json.loads((machine_dir / 'machine.json').read_text())
    image = ImageManifest.from_file(Path(spec.pop('image_manifest')))
    return QemuMachine(MachineSpec(machine_dir=machine_dir, image=image, **spec))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f'python -m {BMC_MODULE}', description=__doc__.splitlines()[0])
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
