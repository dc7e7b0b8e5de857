"""FabricShell against a real OpenSSH sshd on loopback (skipped where sshd is not installed),
plus unit tests of its error mapping."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from paramiko.ssh_exception import AuthenticationException, NoValidConnectionsError

from orchestrator.config.model import SshConfig
from orchestrator.errors import FatalInfraError, RetryableInfraError
from orchestrator.protocols.shell import CommandResult
from orchestrator.transports.ssh import CommandFailed, FabricShell

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class LoopbackSshd:
    """``sshd -D`` on a free port with its own host key, config and authorized_keys."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.host_pub = keygen(root / "host_key")
        self.client_key = root / "client_key"
        (root / "authorized_keys").write_text(keygen(self.client_key) + "\n")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nLogLevel VERBOSE\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # privilege separation dir
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
            stderr=open(root / "sshd.log", "ab"))
        deadline = time.monotonic() + 10
        while not self._listening():
            assert self.process.poll() is None, (root / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not start listening"
            time.sleep(0.02)

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def config(self, **overrides) -> SshConfig:
        values = dict(address="127.0.0.1", port=self.port, user=os.environ.get("USER", "root"),
                      key_file=self.client_key, host_key=self.host_pub, connect_timeout=5,
                      keepalive=2, command_timeout=20)
        values.update(overrides)
        return SshConfig(**values)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD):
        pytest.skip("openssh-server is not installed")
    server = LoopbackSshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def shell(sshd):
    log: list[str] = []
    shell = FabricShell(sshd.config(), log=log.append)
    shell.commands_log = log
    yield shell
    shell.close()


# -- against a real sshd -----------------------------------------------------------------

def test_run_returns_output_and_logs_it(shell):
    result = shell.run("echo out; echo err >&2; exit 0", timeout=10)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "err\n")
    assert shell.commands_log[0] == "$ echo out; echo err >&2; exit 0"
    assert "-> exit 0" in shell.commands_log[1] and "| out" in shell.commands_log[1]


def test_nonzero_exit_raises_command_failed_with_result_unless_unchecked(shell):
    with pytest.raises(CommandFailed) as failure:
        shell.run("echo nope >&2; exit 3", timeout=10)
    assert failure.value.result.exit_code == 3 and "nope" in str(failure.value)
    assert isinstance(failure.value, FatalInfraError)
    assert shell.run("exit 4", timeout=10, check=False).exit_code == 4


def test_timeout_raises_retryable_and_the_next_call_reconnects(shell):
    started = time.monotonic()
    with pytest.raises(RetryableInfraError, match="timed out"):
        shell.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 5
    assert shell.run("echo back", timeout=10).stdout == "back\n"


def test_known_hosts_file_pins_the_key(sshd, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_pub}\n")
    shell = FabricShell(sshd.config(host_key=None, known_hosts=known_hosts))
    assert shell.run("true", timeout=10).ok
    shell.close()


def test_mismatching_pinned_host_key_is_fatal(sshd, tmp_path):
    impostor = keygen(tmp_path / "other_host_key")
    shell = FabricShell(sshd.config(host_key=impostor))
    with pytest.raises(FatalInfraError, match="host key mismatch"):
        shell.run("true", timeout=10)


def test_host_without_pinned_key_is_refused_before_connecting(sshd, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:1 {sshd.host_pub}\n")   # pinned for another port
    shell = FabricShell(sshd.config(host_key=None, known_hosts=known_hosts))
    with pytest.raises(FatalInfraError, match="no pinned host key"):
        shell.run("true", timeout=10)


def test_unknown_client_key_is_fatal(sshd, tmp_path):
    keygen(tmp_path / "stranger")
    shell = FabricShell(sshd.config(key_file=tmp_path / "stranger"))
    with pytest.raises(FatalInfraError, match="authentication refused"):
        shell.run("true", timeout=10)


def test_fire_detached_returns_at_once_and_records_the_outcome(shell, tmp_path):
    output = str(tmp_path / "injection")
    started = time.monotonic()
    shell.fire_detached("sleep 2; echo injected; echo oops >&2; exit 7", timeout=10, output=output)
    assert time.monotonic() - started < 1.5
    assert shell.detached_result(output=output, timeout=10) is None        # still sleeping
    deadline = time.monotonic() + 15
    while (outcome := shell.detached_result(output=output, timeout=10)) is None:
        assert time.monotonic() < deadline, "detached command never finished"
        time.sleep(0.2)
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (7, "injected\n", "oops\n")


def test_dropped_connection_is_retryable_and_reconnects(shell):
    assert shell.run("true", timeout=10).ok
    with pytest.raises(RetryableInfraError):
        shell.run("kill -9 $PPID; sleep 5", timeout=10)   # kills its own sshd session process
    assert shell.run("echo again", timeout=10).stdout == "again\n"


def test_frozen_peer_on_an_open_connection_cannot_hang_a_call(shell, monkeypatch):
    """A panicked guest behind QEMU's user network: TCP stays open, nothing answers. Freezing
    our sshd session process reproduces it: the channel open is never confirmed."""
    import orchestrator.transports.ssh as ssh_mod

    monkeypatch.setattr(ssh_mod, "SSH_WATCHDOG_GRACE_S", 1.0)
    session = shell.run("echo $PPID").stdout.strip()          # the sshd process serving us
    os.kill(int(session), signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RetryableInfraError) as info:
            shell.run("echo never", timeout=2)
        assert time.monotonic() - started < 2 + 1.0 + 3, "the watchdog did not end the stuck call"
        assert "no answer within 2 s" in str(info.value) or "timed out" in str(info.value)
    finally:
        os.kill(int(session), signal.SIGKILL)
    assert shell.run("echo back").stdout.strip() == "back"


def test_connection_refused_is_retryable():
    shell = FabricShell(SshConfig(address="127.0.0.1", port=free_tcp_port(), host_key=None,
                                  known_hosts=None, connect_timeout=2))
    shell._pin_host_key = lambda client: None    # nothing to pin against: test the refusal
    with pytest.raises(RetryableInfraError):
        shell.run("true", timeout=5)


def test_silent_peer_times_out_as_retryable():
    """A peer that accepts TCP but never speaks SSH (a wedged host) must not hang us."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    shell = FabricShell(SshConfig(address="127.0.0.1", port=server.getsockname()[1],
                                  host_key="ssh-ed25519 " + "A" * 68, connect_timeout=1))
    shell._pin_host_key = lambda client: None
    started = time.monotonic()
    with pytest.raises(RetryableInfraError):
        shell.run("true", timeout=5)
    assert time.monotonic() - started < 4
    server.close()


# -- unit: error mapping ------------------------------------------------------------------

@pytest.mark.parametrize("exc, expected", [
    (NoValidConnectionsError({("127.0.0.1", 22): ConnectionRefusedError()}), RetryableInfraError),
    (EOFError(), RetryableInfraError),
    (TimeoutError("timed out"), RetryableInfraError),
    (ConnectionResetError(), RetryableInfraError),
    (AuthenticationException("no"), FatalInfraError),
    (FileNotFoundError(2, "No such file", "/nope/id_ed25519"), FatalInfraError),
])
def test_error_mapping(exc, expected):
    shell = FabricShell(SshConfig(address="h", host_key="x y"))
    error = shell._map_error(exc)
    assert type(error) is expected


def test_command_failed_names_the_command_and_last_stderr_line():
    failure = CommandFailed(CommandResult("modprobe x", 1, "", "a\nmodprobe: not found\n", 0.1), "h")
    assert re.search(r"`modprobe x` exited 1: modprobe: not found", str(failure))
