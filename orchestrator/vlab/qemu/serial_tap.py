"""A direct reader of a machine's serial socket, for tests and benchmarks.

In a running lab the BMC is the socket's one client (it logs the console and serves SOL);
this tap is for a bare ``QemuMachine`` with no BMC attached. It reads in a thread and
``wait_for`` polls the transcript against a deadline. The telnet negotiation QEMU starts
each connection with is dropped (bmc/telnet.py), so the text is the guest's alone.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from orchestrator.vlab.bmc.chardev_client import connect_unix
from orchestrator.vlab.bmc.telnet import TelnetGreeting


class SerialTap:
    RECONNECT_SECONDS = 0.02   # a cold reboot replaces QEMU and its socket: follow it

    def __init__(self, path: Path):
        self.path = path
        self.sock = connect_unix(path)
        if self.sock is None:
            raise ConnectionError(f"no serial console at {path}")
        self._text = ""
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._pump, name=f"serial-tap {path}", daemon=True).start()

    def _pump(self) -> None:
        sock: socket.socket | None = self.sock
        greeting = TelnetGreeting()
        while not self._closed.is_set():
            if sock is None:
                self._closed.wait(self.RECONNECT_SECONDS)
                sock = self.sock = connect_unix(self.path)
                greeting = TelnetGreeting()
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                sock.close()
                sock = None
                continue
            with self._lock:
                self._text += greeting.strip(data).decode(errors="replace")

    @property
    def text(self) -> str:
        with self._lock:
            return self._text

    def mark(self) -> int:
        """Position to pass as ``since`` to see only what arrives from now on."""
        return len(self.text)

    def wait_for(self, needle: str, since: int, timeout: float) -> float:
        """time.monotonic() when ``needle`` was seen after ``since``; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text[since:]:
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"console: no {needle!r} within {timeout:.0f} s; tail:\n{self.text[-1500:]}")

    def close(self) -> None:
        self._closed.set()
        if self.sock is not None:
            self.sock.close()
