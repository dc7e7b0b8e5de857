"""One connection kept open to a QEMU chardev unix socket, across QEMU restarts.

QEMU's socket chardevs (serial console, EINJ doorbell) accept ONE client and drop what the
guest writes while nobody is connected, and every guest reboot is a new QEMU process with a
new socket (qemu/cold_reboot.py). So the BMC keeps a thread per chardev that reconnects at
once when told the machine (re)started and polls otherwise; subclasses serve a connection
in ``_serve`` until it ends.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

RECONNECT_SECONDS = 0.1   # QEMU listens ~0.2 s after its start; the guest writes later still

log = logging.getLogger(__name__)


class ChardevClient:
    def __init__(self, socket_path: Path, thread_name: str):
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._reconnect_now = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._reconnect_now.set()
        self._drop_connection()
        self._thread.join(timeout=2)

    def reconnect_soon(self) -> None:
        """Called right after QEMU (re)starts, so the first bytes are not dropped."""
        self._reconnect_now.set()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            sock = connect_unix(self.socket_path)
            if sock is None:
                self._reconnect_now.wait(RECONNECT_SECONDS)
                self._reconnect_now.clear()
                continue
            self._connected(sock)
            self._sock = sock
            log.info('%s connected: %s', self._thread.name, self.socket_path)
            self._serve(sock)
            self._drop_connection()

    def _connected(self, sock: socket.socket) -> None:
        """Before the connection is served (a fresh telnet greeting, ...)."""

    def _serve(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def _drop_connection(self) -> None:
        sock, self._sock = self._sock, None
        shutdown_and_close(sock)


def connect_unix(path: Path) -> socket.socket | None:
    """A stream connection to QEMU's unix socket at ``path``, or None while it is not there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def shutdown_and_close(sock: socket.socket | None) -> None:
    """shutdown() first: a bare close() does not wake a thread blocked in recv/accept."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
