"""A small, thread-safe QMP client: one short-lived connection per command.

A connection per call costs about a millisecond and means no state to lose when QEMU is
restarted under us; QEMU serves one QMP client at a time, so calls are serialised by a
lock and every socket operation has a short timeout (a hung QEMU never hangs the caller).
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

from orchestrator.errors import FatalInfraError, RetryableInfraError


class QmpError(FatalInfraError):
    """QEMU answered the command with an error."""

    def __init__(self, command: str, error_class: str, desc: str):
        self.command, self.error_class, self.desc = command, error_class, desc
        super().__init__(f"QMP {command}: {error_class}: {desc}")


class QmpClient:
    def __init__(self, socket_path: Path, timeout: float = 3.0):
        self.socket_path, self.timeout = Path(socket_path), timeout
        self._lock = threading.Lock()
        self._next_id = 0

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        """Run one command; returns its ``return`` value. Raises ``QmpError`` for a QEMU error
        reply and ``RetryableInfraError`` when the socket is absent, refused or silent."""
        with self._lock:
            self._next_id += 1
            request: dict[str, Any] = {"execute": command, "id": self._next_id}
            if arguments:
                request["arguments"] = arguments
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(timeout or self.timeout)
                    sock.connect(str(self.socket_path))
                    stream = sock.makefile("rwb")
                    self._read_reply(stream, None)   # the greeting
                    self._send(stream, {"execute": "qmp_capabilities"})
                    self._read_reply(stream, "qmp_capabilities")
                    self._send(stream, request)
                    return self._read_reply(stream, command, self._next_id)
            except (OSError, ValueError) as exc:   # timeouts are OSErrors too
                raise RetryableInfraError(f"QMP {command} on {self.socket_path}: {exc}") from exc

    @staticmethod
    def _send(stream: Any, message: dict[str, Any]) -> None:
        stream.write(json.dumps(message).encode() + b"\r\n")
        stream.flush()

    @staticmethod
    def _read_reply(stream: Any, command: str | None, request_id: int | None = None) -> Any:
        while True:
            line = stream.readline()
            if not line:
                raise ConnectionError("QEMU closed the QMP connection")
            message = json.loads(line)
            if command is None and "QMP" in message:
                return message
            if "event" in message:
                continue   # asynchronous events are not ours to consume here
            if request_id is not None and message.get("id") != request_id:
                continue
            if "error" in message:
                err = message["error"]
                raise QmpError(command or "?", err.get("class", "?"), err.get("desc", ""))
            if "return" in message:
                return message["return"]
