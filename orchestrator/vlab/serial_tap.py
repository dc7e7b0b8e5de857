"""A direct reader of a machine's serial socket, for tests and benchmarks.

In a running lab the BMC is the socket's one client (it logs the console and serves SOL);
this tap is for a bare ``QemuMachine`` with no BMC attached. It reads in a thread and
``wait_for`` polls the transcript against a deadline.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class SerialTap:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self._text = ""
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, name=f"serial-tap {path}", daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._text += data.decode(errors="replace")

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
        self.sock.close()
