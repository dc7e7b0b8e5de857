"""The BMC's side of the serial console: one connection to QEMU's ``serial.sock``.

QEMU's socket chardev accepts ONE client, and drops output while nobody is connected, so
the BMC keeps exactly one reader connected at all times (reconnecting across QEMU
restarts) and fans the bytes out: every byte to ``console.log`` (raw, appended, whether or
not a SOL client is attached) and a copy to a buffer the BMC main loop drains into SOL.

The chardev is a telnet one (telnet.py: how a serial BREAK gets to the guest): each
connection's leading negotiation is dropped, keystrokes are escaped, and the rest is
passed on byte-exact. Only this module's thread touches the socket for reading; pyghmi is
never called here (sol-and-ghes.md F4): the thread wakes the BMC main loop with a small UDP datagram to the
BMC port instead, which pyghmi's sessionless handler ignores (shorter than 22 bytes).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable

from orchestrator.vlab.bmc import telnet
from orchestrator.vlab.bmc.chardev_client import ChardevClient

WAKE_DATAGRAM = b'WAKE'   # >= 4 bytes, or pyghmi's I/O thread skips it without waking anyone
READ_SIZE = 4096

log = logging.getLogger(__name__)


class SerialConsoleReader(ChardevClient):
    """Keeps ``socket_path`` connected; ``take()`` returns the bytes read since last time."""

    def __init__(self, socket_path: Path, console_log: Path, wake: Callable[[], None],
                 trace: BinaryIO | None = None):
        super().__init__(socket_path, 'serial-reader')
        self.console_log = console_log
        self._wake = wake
        self._trace = trace          # bench: "<monotonic> <console.log size>" per read
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._greeting = telnet.TelnetGreeting()
        self._log_file: BinaryIO | None = None

    def take(self) -> bytes:
        with self._lock:
            data = bytes(self._pending)
            self._pending.clear()
        return data

    def write(self, data: bytes) -> None:
        """Keystrokes from the SOL client. Dropped while QEMU is off, as on a real BMC."""
        self._send(telnet.escape(data) if self._greeting.telnet else data)

    def send_break(self) -> bool:
        """A serial BREAK on the guest's UART (SOL's "generate break"); False where the
        chardev cannot carry one (not a telnet one, or QEMU is off)."""
        if not self._greeting.telnet:
            log.info('serial BREAK requested but the console is not a telnet chardev: dropped')
            return False
        return self._send(telnet.BREAK)

    def _send(self, data: bytes) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendall(data)
            return True
        except OSError as error:
            log.info('console write failed (%s); QEMU is probably gone', error)
            return False

    def _run(self) -> None:
        with open(self.console_log, 'ab', buffering=0) as self._log_file:
            super()._run()

    def _connected(self, sock: socket.socket) -> None:
        self._greeting = telnet.TelnetGreeting()   # every QEMU connection starts with one

    def _serve(self, sock: socket.socket) -> None:
        console_log = self._log_file
        while not self._stop.is_set():
            try:
                chunk = sock.recv(READ_SIZE)
            except OSError:
                chunk = b''
            if not chunk:
                break
            chunk = self._greeting.strip(chunk)
            if not chunk:
                continue
            read_at = time.monotonic()
            console_log.write(chunk)
            if self._trace is not None:
                self._trace.write(b'%.6f %d\n' % (read_at, console_log.tell()))
                self._trace.flush()
            with self._lock:
                self._pending += chunk
            self._wake()
        log.info('serial console disconnected (QEMU stopped or restarting)')


def udp_waker(port: int, address: str = '127.0.0.1') -> Callable[[], None]:
    """A callable that wakes pyghmi's event loop (``Session.wait_for_rsp``) in the BMC."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def wake() -> None:
        try:
            sock.sendto(WAKE_DATAGRAM, (address, port))
        except OSError:
            pass

    return wake
