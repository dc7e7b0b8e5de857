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

from orchestrator.config.inventory import load_inventory
from orchestrator.config.model import SecretRef, SshConfig
from orchestrator.errors import ConfigError, FatalInfraError, RetryableInfraError
from orchestrator.protocols.shell import CommandResult
from orchestrator.transports.ssh import CommandFailed, FabricShell
from orchestrator.tunables import DETACH_WAIT_MAX_S

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
        self.host_key_file = root / "host_key"
        self.host_pub = keygen(self.host_key_file)
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


def test_a_shell_adopts_another_ones_live_connection_and_drops_its_own(shell):
    probe = shell.fresh()
    probe.run("true", timeout=10)
    shell.run("true", timeout=10)
    own, probes = shell._connection, probe._connection
    shell.adopt(probe)
    assert shell._connection is probes and probe._connection is None and not own.is_connected
    assert shell.run("echo same", timeout=10).stdout == "same\n" and shell._connection is probes
    shell.adopt(shell.fresh())          # nothing live to take over: connects again when used
    assert shell._connection is None and not probes.is_connected
    assert shell.run("echo again", timeout=10).stdout == "again\n"


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


def test_mismatch_names_both_fingerprints_and_no_known_hosts_of_the_user_overrides_the_pin(
        sshd, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_pub}\n")  # the real key
    monkeypatch.setenv("HOME", str(home))
    impostor = keygen(tmp_path / "other_host_key")
    with pytest.raises(FatalInfraError) as info:
        FabricShell(sshd.config(host_key=impostor)).run("true", timeout=10)
    fingerprints = [subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                                   check=True).stdout.split()[1]
                    for pub in (tmp_path / "other_host_key.pub", sshd.host_key_file.with_suffix(".pub"))]
    assert f"the host offers ssh-ed25519 {fingerprints[1]}, the inventory pins {fingerprints[0]}" in str(info.value)


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


def test_a_detached_command_starts_only_after_the_call_that_fired_it_returned(shell, tmp_path):
    output = str(tmp_path / "injection")
    for _ in range(5):
        shell.fire_detached("date +%s.%N", timeout=10, output=output)
        returned = time.time()
        deadline = time.monotonic() + 15
        while (outcome := shell.detached_result(output=output, timeout=10)) is None:
            assert time.monotonic() < deadline, "detached command never finished"
            time.sleep(0.02)
        # it waits for the launching shell to be gone, then DETACH_GRACE_S (0.1 s) more
        assert float(outcome.stdout) >= returned + 0.05, (float(outcome.stdout), returned)
        assert float(outcome.stdout) < returned + DETACH_WAIT_MAX_S + 1


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


def test_a_close_from_another_thread_ends_a_connection_waiting_for_its_banner():
    """What cycle/hostwait.py does to the boot probes still in flight once one has answered."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    shell = FabricShell(SshConfig(address="127.0.0.1", port=server.getsockname()[1],
                                  host_key="ssh-ed25519 " + "A" * 68, connect_timeout=20))
    shell._pin_host_key = lambda client: None
    outcome = []
    caller = threading.Thread(target=lambda: outcome.append(pytest.raises(RetryableInfraError, shell.run, "true",
                                                                          timeout=30)))
    started = time.monotonic()
    caller.start()
    while shell._opening is None or shell._opening.client.get_transport() is None:
        assert time.monotonic() - started < 5, "the connection never got to its banner wait"
        time.sleep(0.01)
    shell.close()
    caller.join(timeout=10)
    assert outcome and time.monotonic() - started < 5       # not its 20 s banner timeout
    server.close()


# -- an encrypted client key, its passphrase by reference --------------------------------

@pytest.fixture
def encrypted_key(sshd, tmp_path):
    """A copy of the sshd's authorized client key, encrypted with a passphrase."""
    key = tmp_path / "client_key_encrypted"
    shutil.copyfile(sshd.client_key, key)
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "correct horse", "-f", str(key)], check=True,
                   capture_output=True)
    return key


def test_encrypted_key_with_its_passphrase_from_the_environment_logs_in(sshd, encrypted_key, monkeypatch):
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", "correct horse")
    log: list[str] = []
    shell = FabricShell(sshd.config(key_file=encrypted_key, key_passphrase=SecretRef(env="TEST_KEY_PASSPHRASE")),
                        log=log.append)
    assert shell.run("echo in", timeout=10).stdout == "in\n"
    assert shell.fresh().run("true", timeout=10).ok      # the decrypted key is shared, not re-derived
    shell.close()
    assert not any("correct horse" in line for line in log)


def test_encrypted_key_with_its_passphrase_from_a_file_logs_in(sshd, encrypted_key, tmp_path):
    (tmp_path / "passphrase").write_text("correct horse\n")
    shell = FabricShell(sshd.config(key_file=encrypted_key, key_passphrase=SecretRef(file=tmp_path / "passphrase")))
    assert shell.run("true", timeout=10).ok
    shell.close()


def test_wrong_passphrase_is_fatal_and_does_not_echo_it(sshd, encrypted_key, monkeypatch):
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", "battery staple")
    shell = FabricShell(sshd.config(key_file=encrypted_key, key_passphrase=SecretRef(env="TEST_KEY_PASSPHRASE")))
    with pytest.raises(FatalInfraError, match=r"cannot decrypt key_file .* \(wrong passphrase\?\)") as info:
        shell.run("true", timeout=10)
    assert "battery staple" not in str(info.value)


def test_encrypted_key_without_a_passphrase_is_fatal(sshd, encrypted_key):
    shell = FabricShell(sshd.config(key_file=encrypted_key))
    with pytest.raises(FatalInfraError, match="authentication refused.*encrypted"):
        shell.run("true", timeout=10)


def test_passphrase_variable_unset_when_connecting_is_bad_input(sshd, encrypted_key, monkeypatch):
    monkeypatch.delenv("TEST_KEY_PASSPHRASE", raising=False)
    shell = FabricShell(sshd.config(key_file=encrypted_key, key_passphrase=SecretRef(env="TEST_KEY_PASSPHRASE")))
    with pytest.raises(ConfigError, match="TEST_KEY_PASSPHRASE is not set"):
        shell.run("true", timeout=10)


INVENTORY = """\
version: 1
hosts:
  - name: h1
    arch: x86_64
    platform: qemu-x86_64
    destructive: true
    ssh: {address: 127.0.0.1, key_file: key, host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"%s}
    bmc: null
"""


def inventory(tmp_path: Path, ssh_extra: str) -> Path:
    (tmp_path / "key").write_text("an encrypted key\n")
    path = tmp_path / "inv.yaml"
    path.write_text(INVENTORY % ssh_extra)
    return path


def test_inventory_takes_the_passphrase_by_reference_and_resolves_it_only_later(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_PASSPHRASE", raising=False)
    host = load_inventory(inventory(tmp_path, ", key_passphrase: {env: NO_SUCH_PASSPHRASE}")).host("h1")
    assert host.ssh.key_passphrase == SecretRef(env="NO_SUCH_PASSPHRASE", origin=f"{tmp_path / 'inv.yaml'}:7")
    (tmp_path / "pp").write_text("from a file\n")
    host = load_inventory(inventory(tmp_path, ", key_passphrase: {file: pp}")).host("h1")
    assert host.ssh.key_passphrase.resolve() == "from a file"


@pytest.mark.parametrize("extra, message", [
    (", key_passphrase: hunter2", "inline passphrases are refused: use {env: VAR} or {file: PATH}"),
    (", key_passphrase: {env: A, file: pp}", "give exactly one of env or file"),
    (", key_passphrase: {}", "give exactly one of env or file"),
    (", key_passphrase: {vault: x}", "unknown field"),
    (", key_passphrase: {file: nope}", "passphrase file"),
])
def test_inventory_passphrase_errors_are_one_line_bad_input(tmp_path, extra, message):
    (tmp_path / "pp").write_text("x\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(inventory(tmp_path, extra))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert info.value.line == 7 and "hunter2" not in str(info.value)


def test_inventory_passphrase_without_a_key_file_is_bad_input(tmp_path):
    path = inventory(tmp_path, ", key_passphrase: {env: A}")
    path.write_text(path.read_text().replace("key_file: key, ", ""))
    with pytest.raises(ConfigError, match="key_passphrase: a passphrase without key_file"):
        load_inventory(path)


def test_run_with_the_passphrase_variable_unset_is_bad_input_before_any_host(tmp_path, capsys, monkeypatch):
    from orchestrator.faces.cli.main import main

    monkeypatch.delenv("NO_SUCH_PASSPHRASE", raising=False)
    path = inventory(tmp_path, ", key_passphrase: {env: NO_SUCH_PASSPHRASE}")
    code = main(["run", "-i", str(path), str(Path(__file__).parent.parent / "playbooks/smoke.yaml"),
                 "--results", str(tmp_path / "r")])
    assert code == 2 and "NO_SUCH_PASSPHRASE is not set" in capsys.readouterr().err
    assert not any((tmp_path / "r").glob("*/cases"))


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
