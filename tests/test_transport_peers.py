"""Real loopback peers for the transport tests: a BMC process and a fake guest serial port.

``LoopbackBmc`` runs the virtual lab's own BMC (``orchestrator.vlab.bmc.server.QemuBmc``, with its
pyghmi server fixes) in a subprocess, one BMC per process as pyghmi's server requires, over
an in-memory machine instead of QEMU. ``GuestSerial`` plays QEMU's serial chardev socket,
so a test can print console lines the BMC streams over SOL, and can kill and restart the
BMC under an open console while the "guest" stays up.

Run as a script, this module is the BMC process: ``python test_transport_peers.py DIR``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "admin", "loopback-secret"


class MemoryMachine:
    """The ``Machine`` protocol of ``orchestrator.vlab.bmc.server`` with power kept in memory."""

    def __init__(self, nmi: bool = True):
        self.powered, self.nmi, self.resets = True, nmi, 0

    def start(self) -> None:
        self.powered = True

    def stop(self) -> None:
        self.powered = False

    def is_running(self) -> bool:
        return self.powered

    def status(self) -> str:
        return "running" if self.powered else "shutdown"

    def reset(self) -> None:
        self.resets += 1

    def powerdown(self) -> None:
        self.powered = False

    def inject_nmi(self) -> None:
        if not self.nmi:
            from orchestrator.errors import UnsupportedOperation
            raise UnsupportedOperation("no NMI on this machine")

    def qmp(self, cmd: str, **args):
        return {}


def _serve_bmc(machine_dir: Path, port: int, nmi: bool) -> None:
    import logging
    from orchestrator.vlab.bmc.server import BmcConfig
    from orchestrator.vlab.bmc.process import run_bmc
    logging.basicConfig(filename=machine_dir / "bmc.log", level=logging.INFO)
    run_bmc(BmcConfig(machine_dir=machine_dir, user=USER, password=PASSWORD, port=port),
            MemoryMachine(nmi=nmi))


#: what QEMU's telnet=on chardev sends first on every connection (WILL ECHO, SGA, BINARY; DO BINARY)
QEMU_TELNET_GREETING = bytes.fromhex("fffb01fffb03fffb00fffd00")


class GuestSerial:
    """A unix socket server standing in for QEMU's serial chardev (one client at a time);
    ``telnet``: it greets each client as QEMU's ``telnet=on`` chardev does."""

    def __init__(self, path: Path, telnet: bool = False):
        self.path, self.telnet = path, telnet
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self._client: socket.socket | None = None
        self._connected = threading.Condition()
        self.received = bytearray()       # keystrokes from the SOL client
        threading.Thread(target=self._accept_forever, daemon=True).start()

    def _accept_forever(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.telnet:
                client.sendall(QEMU_TELNET_GREETING)
            with self._connected:
                self._client = client
                self._connected.notify_all()
            while chunk := self._recv(client):
                self.received += chunk

    @staticmethod
    def _recv(client: socket.socket) -> bytes:
        try:
            return client.recv(4096)
        except OSError:
            return b""

    def say(self, data: bytes | str, timeout: float = 10.0) -> None:
        """Print ``data`` on the console once the BMC's reader is connected."""
        if isinstance(data, str):
            data = data.encode()
        with self._connected:
            if not self._connected.wait_for(lambda: self._client is not None, timeout):
                raise TimeoutError("the BMC never connected to the guest serial socket")
            self._client.sendall(data)

    def close(self) -> None:
        self._server.close()
        if self._client is not None:
            self._client.close()


class LoopbackBmc:
    """One BMC subprocess on 127.0.0.1; ``kill()`` and ``start()`` keep its UDP port."""

    def __init__(self, machine_dir: Path, *, nmi: bool = True, telnet: bool = False):
        self.machine_dir = machine_dir
        machine_dir.mkdir(parents=True, exist_ok=True)
        self.nmi = nmi
        self.port = 0
        self.guest = GuestSerial(machine_dir / "serial.sock", telnet=telnet)
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self, timeout: float = 20.0) -> None:
        pid_file = self.machine_dir / "bmc.pid"
        pid_file.unlink(missing_ok=True)
        args = [sys.executable, __file__, str(self.machine_dir), str(self.port)]
        if not self.nmi:
            args.append("--no-nmi")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.machine_dir / "bmc.stderr", "ab") as stderr:
            self.process = subprocess.Popen(args, env=env, stdout=stderr, stderr=stderr)
        deadline = time.monotonic() + timeout
        while not pid_file.exists():     # written last by run_bmc: the BMC is listening
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"loopback BMC did not start; see {self.machine_dir}/bmc.stderr")
            time.sleep(0.02)
        self.port = int((self.machine_dir / "bmc.port").read_text())

    def kill(self) -> None:
        """Die as a crashed BMC does: no logout, no SOL deactivation."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        self.guest.close()

    def bmc_config(self, **overrides):
        from orchestrator.config.model import BmcConfig, SecretRef
        password_file = self.machine_dir / "bmc-password"
        password_file.write_text(PASSWORD)
        values = dict(address="127.0.0.1", port=self.port, user=USER,
                      password=SecretRef(file=password_file))
        values.update(overrides)
        return BmcConfig(**values)


def test_loopback_bmc_streams_guest_output_to_console_log(tmp_path):
    bmc = LoopbackBmc(tmp_path / "m1")
    try:
        bmc.guest.say("hello from the guest\n")
        log_file = tmp_path / "m1" / "console.log"
        deadline = time.monotonic() + 5
        while b"hello from the guest" not in (log_file.read_bytes() if log_file.exists() else b""):
            assert time.monotonic() < deadline, "console.log never got the guest's line"
            time.sleep(0.02)
    finally:
        bmc.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _serve_bmc(Path(sys.argv[1]), int(sys.argv[2]), nmi="--no-nmi" not in sys.argv)
