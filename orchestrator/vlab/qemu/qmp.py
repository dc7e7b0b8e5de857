"""QMP through QEMU's own client library (``qemu.qmp``), mapped to the project's errors.

One short-lived connection per command: it costs about a millisecond and means no state to
lose when QEMU is restarted under us. QEMU serves one QMP client at a time, so calls are
serialised by a lock, and the whole exchange (connect, greeting, negotiation, command) runs
under one timeout, so a hung QEMU never hangs the caller.

Why the library's asyncio ``QMPClient`` and not its synchronous ``legacy.QEMUMonitorProtocol``:
the legacy ``connect()`` waits for QEMU's greeting with no timeout (only ``cmd()`` has one),
and its ``pull_event(wait=True)`` does not return when QEMU closes the socket, so a second
monitor that only waits for events could never tell "no event yet" from "QEMU is gone".
Each call here runs the library's coroutine in a private event loop (``asyncio.run``), so
callers stay synchronous and any thread may call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError, Runstate

from orchestrator.errors import FatalInfraError, RetryableInfraError

# The library logs every refused connection and every end-of-file as an ERROR (QEMU not up
# yet, QEMU killed by a power-off): normal events here, reported to the caller as
# RetryableInfraError with the reason, so its own account of them is noise.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

#: What a broken exchange raises: refused/absent socket, QEMU gone mid-reply, our timeout
_LINK_ERRORS = (OSError, EOFError, ConnectError, QMPError, asyncio.TimeoutError)


class QmpError(FatalInfraError):
    """QEMU answered the command with an error."""

    def __init__(self, command: str, error_class: str, desc: str):
        self.command, self.error_class, self.desc = command, error_class, desc
        super().__init__(f"QMP {command}: {error_class}: {desc}")


class QmpClient:
    def __init__(self, socket_path: Path, timeout: float = 3.0):
        self.socket_path, self.timeout = Path(socket_path), timeout
        self._lock = threading.Lock()

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        """Run one command; returns its ``return`` value. Raises ``QmpError`` for a QEMU error
        reply and ``RetryableInfraError`` when the socket is absent, refused or silent."""
        limit = timeout or self.timeout
        with self._lock:
            try:
                return asyncio.run(asyncio.wait_for(
                    _execute_once(self.socket_path, command, arguments or {}), limit))
            except ExecuteError as exc:
                raise QmpError(command, exc.error_class, str(exc)) from exc
            except _LINK_ERRORS as exc:
                why = str(exc) or f"no answer within {limit:g} s ({type(exc).__name__})"
                raise RetryableInfraError(f"QMP {command} on {self.socket_path}: {why}") from exc


async def _execute_once(socket_path: Path, command: str, arguments: dict[str, Any]) -> Any:
    client = QMPClient(socket_path.name)
    await client.connect(str(socket_path))
    try:
        return await client.execute(command, arguments)
    finally:
        await _disconnect_quietly(client)


async def _disconnect_quietly(client: QMPClient) -> None:
    # disconnect() re-raises what ended the connection (QEMU's exit): gone either way
    try:
        await client.disconnect()
    except _LINK_ERRORS:
        pass


def watch_events(socket_path: Path, wanted: Callable[[dict[str, Any]], bool],
                 connect_timeout: float) -> dict[str, Any] | None:
    """Hold a (second) monitor open until QEMU sends an event ``wanted`` accepts; return it,
    or None once QEMU closes the monitor without one. ``RetryableInfraError`` if no
    connection was made within ``connect_timeout``."""
    return asyncio.run(_watch_events(socket_path, wanted, connect_timeout))


async def _watch_events(socket_path: Path, wanted: Callable[[dict[str, Any]], bool],
                        connect_timeout: float) -> dict[str, Any] | None:
    client = await _connect_within(socket_path, connect_timeout)
    if client is None:
        raise RetryableInfraError(f"no QMP monitor at {socket_path} within {connect_timeout:g} s")
    try:
        while client.runstate == Runstate.RUNNING:
            # Wait for an event OR the end of the connection: the library's event queue
            # alone never wakes up when QEMU exits.
            event = asyncio.ensure_future(client.events.get())
            ended = asyncio.ensure_future(client.runstate_changed())
            await asyncio.wait({event, ended}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if not event.done():
                event.cancel()
            elif wanted(dict(event.result())):
                return dict(event.result())
        # the last event (QEMU's SHUTDOWN) may have been queued just before the EOF
        return next((dict(e) for e in client.events.clear() if wanted(dict(e))), None)
    finally:
        await _disconnect_quietly(client)


async def _connect_within(socket_path: Path, timeout: float) -> QMPClient | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        client = QMPClient(socket_path.name)
        try:
            await asyncio.wait_for(client.connect(str(socket_path)), max(0.1, deadline - loop.time()))
            return client
        except _LINK_ERRORS:
            await _disconnect_quietly(client)
            await asyncio.sleep(0.02)
    return None
