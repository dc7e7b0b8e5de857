"""POSIX shell on a lab host over SSH, via Fabric (``ShellProtocol``).

Hosts panic and reboot under us, so: the host key is pinned (never learned on the fly), a
dead peer must become an error rather than a hang (paramiko keepalives plus a TCP user
timeout, and a ``timeout`` on every call), the connection is re-opened lazily after it
drops, and the injection is fired detached so no SSH call waits on a dying kernel.
"""

from __future__ import annotations

import base64
import logging
import shlex
import socket
import threading
import time
from contextlib import suppress
from typing import Callable

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from paramiko.ssh_exception import AuthenticationException, BadHostKeyException, SSHException

from orchestrator.config.model import SshConfig
from orchestrator.errors import FatalInfraError, InfraError, RetryableInfraError
from orchestrator.protocols.shell import CommandFailed, CommandResult, ShellProtocol  # noqa: F401 (re-exported)
from orchestrator.protocols.shell import detached_files
from orchestrator.tunables import DETACH_GRACE_S, DETACH_WAIT_MAX_S, SSH_WATCHDOG_GRACE_S

NO_EXIT_STATUS = -1            # paramiko's exit code when the channel closed without one

# paramiko's transport thread logs every refused banner of a rebooting host as an ERROR with
# a traceback (Python's last-resort handler prints it when nobody configured logging). This
# module turns those failures into RetryableInfraError with the reason: paramiko's is noise.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class _PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Only the pinned key is known; any other host key is refused, never added."""

    def missing_host_key(self, client, hostname, key):
        raise FatalInfraError(f"{hostname}: host key {key.get_name()} is not the pinned one")


class FabricShell(ShellProtocol):
    """Commands on one host; reconnects lazily after ``close()`` or a dropped connection."""

    def __init__(self, cfg: SshConfig, *, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self._log = log or (lambda line: None)
        self._connection: Connection | None = None
        self._opening: Connection | None = None      # a handshake in progress, for close()
        self._pkey: paramiko.PKey | None = None      # the decrypted key_file, when it has a passphrase

    # -- ShellProtocol ------------------------------------------------------------------

    def run(self, command: str, *, timeout: float | None = None, check: bool = True) -> CommandResult:
        """Run ``command`` (default timeout ``cfg.command_timeout``). ``CommandFailed`` on a
        non-zero exit with ``check``; ``RetryableInfraError`` on a timeout or a lost link."""
        timeout = self.cfg.command_timeout if timeout is None else timeout
        self._log(f"$ {command}")
        started = time.monotonic()
        # invoke's timeout only covers a running command: opening the channel on a link whose
        # far end died behind a NAT (QEMU's user network keeps it open) waits for ever. The
        # watchdog closes the transport, which wakes whatever paramiko call is stuck.
        watchdog = threading.Timer(timeout + SSH_WATCHDOG_GRACE_S, self._abort_stuck_call)
        watchdog.daemon = True
        watchdog.start()
        try:
            connection = self._open()
            reply = connection.run(command, hide=True, warn=True, timeout=timeout,
                                   in_stream=False, pty=False)
        except CommandTimedOut as exc:
            raise self._lost(command, f"timed out after {timeout:g} s") from exc
        except (InfraError, SSHException, EOFError, OSError) as exc:
            self.close()
            if time.monotonic() - started >= timeout:
                raise self._lost(command, f"no answer within {timeout:g} s") from exc
            error = self._map_error(exc)
            self._log(f"-> {error}")
            raise error from exc
        except BaseException:
            self.close()
            raise
        finally:
            watchdog.cancel()
        result = CommandResult(command, reply.exited, reply.stdout, reply.stderr,
                               time.monotonic() - started)
        if result.exit_code == NO_EXIT_STATUS:
            # invoke's timeout closes the channel from a timer thread and may return
            # before it notices its own timeout: tell the two causes apart by the clock.
            timed_out = result.seconds >= timeout
            raise self._lost(command, f"timed out after {timeout:g} s" if timed_out
                             else "connection lost")
        self._log_result(result)
        if check and not result.ok:
            raise CommandFailed(result, self._where())
        return result

    def fresh(self) -> "FabricShell":
        shell = FabricShell(self.cfg, log=self._log)
        shell._pkey = self._pkey      # decrypting again would only repeat the key's KDF
        return shell

    def adopt(self, other: ShellProtocol) -> None:
        self.close()
        same_host = isinstance(other, FabricShell) and (other.cfg.address, other.cfg.port) == (
            self.cfg.address, self.cfg.port)
        connection = other._connection if same_host else None
        if connection is None or not connection.is_connected:
            other.close()
            return
        other._connection = None
        self._connection = connection

    def fire_detached(self, command: str, *, timeout: float, output: str) -> None:
        """Start ``command`` in a new session on the host once this call's own shell has gone
        (and DETACH_GRACE_S more), and return at once (ShellProtocol says where its outcome lands)."""
        files = detached_files(output)
        polls = int(DETACH_WAIT_MAX_S / 0.01)
        job = (f"n=0; while kill -0 \"$1\" 2>/dev/null && [ $n -lt {polls} ]; do sleep 0.01; n=$((n + 1)); done; "
               f"sleep {DETACH_GRACE_S:.3f}; ( {command} ) >{files['out']} 2>{files['err']}; "
               f"echo $? >{files['rc']}.tmp && mv {files['rc']}.tmp {files['rc']}")
        # setsid: out of the SSH session's process group, so nothing the session's end
        # sends reaches it; all three streams redirected, so sshd need not wait for it.
        launcher = (f"rm -f {files['out']} {files['err']} {files['rc']}; "
                    f"S=$(command -v setsid); nohup $S sh -c {shlex.quote(job)} detached $$ "
                    f"</dev/null >/dev/null 2>&1 &")
        self.run(launcher, timeout=timeout)

    def close(self) -> None:
        """From another thread, also ends a handshake under way (cycle/hostwait.py's spare probes)."""
        connection, self._connection, opening = self._connection, None, self._opening
        with suppress(Exception):   # closing a dead transport may raise; it is gone either way
            connection is None or connection.close()
        with suppress(Exception):   # Fabric's close skips a connection not open yet: paramiko's does not
            opening is None or opening.client.close()

    # -- connection -----------------------------------------------------------------------

    def _open(self) -> Connection:
        if self._connection is not None and self._connection.is_connected:
            return self._connection
        self.close()
        connect_kwargs = {"look_for_keys": False, "allow_agent": False,   # only the lab key
                          "banner_timeout": self.cfg.banner_timeout or self.cfg.connect_timeout,
                          "auth_timeout": self.cfg.connect_timeout}
        if self.cfg.key_passphrase is not None:
            connect_kwargs["pkey"] = self._decrypted_key()
        elif self.cfg.key_file:
            connect_kwargs["key_filename"] = [str(self.cfg.key_file)]
        connection = Connection(
            self.cfg.address, user=self.cfg.user, port=self.cfg.port,
            config=Config(ssh_config=paramiko.SSHConfig()),   # no ~/.ssh/config surprises
            connect_timeout=max(1, round(self.cfg.connect_timeout)),
            connect_kwargs=connect_kwargs)
        self._pin_host_key(connection.client)
        self._opening = connection
        try:
            connection.open()
        except BaseException:
            connection.close()
            raise
        finally:
            self._opening = None
        self._detect_dead_peers(connection.transport)
        self._connection = connection
        return connection

    def _decrypted_key(self) -> paramiko.PKey:
        """The encrypted key_file, decrypted once per shell. Not paramiko's ``passphrase``: it
        runs the KDF once per key type it guesses, thrice per connect (a rebooting host is
        polled often), and calls a wrong passphrase a retryable "Invalid key". The passphrase
        is resolved here, when needed, and kept nowhere (no log, result or command line)."""
        if self._pkey is None:
            passphrase = self.cfg.key_passphrase.resolve().encode()
            try:
                self._pkey = paramiko.PKey.from_path(self.cfg.key_file, passphrase)
            except OSError as exc:
                raise FatalInfraError(f"{self._where()}: cannot read key_file {self.cfg.key_file}: "
                                      f"{exc.strerror}") from None
            except TypeError as exc:    # cryptography: "Password was given but ... not encrypted"
                raise FatalInfraError(f"{self._where()}: key_file {self.cfg.key_file}: {exc}") from None
            except (ValueError, SSHException):
                raise FatalInfraError(f"{self._where()}: cannot decrypt key_file {self.cfg.key_file} "
                                      f"with its key_passphrase (wrong passphrase?)") from None
        return self._pkey

    def _pin_host_key(self, client: paramiko.SSHClient) -> None:
        name = self.cfg.address if self.cfg.port == 22 else f"[{self.cfg.address}]:{self.cfg.port}"
        if self.cfg.host_key:
            key_type, key_data = self.cfg.host_key.split()[:2]
            key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data))
            client.get_host_keys().add(name, key.get_name(), key)
        elif self.cfg.known_hosts:
            pinned = paramiko.HostKeys()
            try:
                pinned.load(str(self.cfg.known_hosts))
            except OSError as exc:
                raise FatalInfraError(f"{self._where()}: cannot read known_hosts: {exc}") from exc
            for key_type, key in (pinned.lookup(name) or {}).items():
                client.get_host_keys().add(name, key_type, key)
        if not client.get_host_keys().lookup(name):
            raise FatalInfraError(f"{self._where()}: no pinned host key for {name}")
        client.set_missing_host_key_policy(_PinnedHostKeyPolicy())

    def _abort_stuck_call(self) -> None:
        connection = self._connection
        if connection is not None and connection.transport is not None:
            connection.transport.close()

    def _detect_dead_peers(self, transport: paramiko.Transport) -> None:
        # Keepalives alone never fail: paramiko wants no reply. TCP_USER_TIMEOUT turns the
        # keepalive that a dead (panicked) host never acknowledges into a socket error.
        transport.set_keepalive(self.cfg.keepalive)
        user_timeout_ms = int(max(10, 3 * self.cfg.keepalive) * 1000)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)

    # -- errors and logging ---------------------------------------------------------------

    def _where(self) -> str:
        return f"ssh {self.cfg.user}@{self.cfg.address}:{self.cfg.port}"

    def _lost(self, command: str, what: str) -> RetryableInfraError:
        self.close()    # the channel is in an unknown state; the host may be dying
        self._log(f"-> {what}")
        return RetryableInfraError(f"{self._where()}: `{command}`: {what}")

    def _map_error(self, exc: BaseException) -> InfraError:
        if isinstance(exc, InfraError):
            return exc
        if isinstance(exc, BadHostKeyException):
            # Fingerprints as `ssh-keygen -lf` prints them, so the two can be checked by hand:
            # a reinstalled host, or someone else answering on its address.
            return FatalInfraError(f"{self._where()}: host key mismatch: the host offers {exc.key.get_name()} "
                                   f"{exc.key.fingerprint}, the inventory pins {exc.expected_key.fingerprint}")
        if isinstance(exc, AuthenticationException):
            return FatalInfraError(f"{self._where()}: authentication refused: {exc}")
        if isinstance(exc, FileNotFoundError) and getattr(exc, "filename", None):
            return FatalInfraError(f"{self._where()}: {exc.filename}: no such file (key_file?)")
        # refused (NoValidConnectionsError), timeout, reset, EOF, protocol trouble
        return RetryableInfraError(f"{self._where()}: {type(exc).__name__}: {exc}")

    def _log_result(self, result: CommandResult) -> None:
        lines = [f"-> exit {result.exit_code} in {result.seconds:.2f} s"]
        lines += [f"   | {line}" for line in result.stdout.splitlines()]
        lines += [f"   ! {line}" for line in result.stderr.splitlines()]
        self._log("\n".join(lines))
