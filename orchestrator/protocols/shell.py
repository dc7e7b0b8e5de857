"""Running POSIX sh commands on a host: the shell capability (Fabric SSH on real hosts)."""

from __future__ import annotations

import abc
import shlex
from dataclasses import dataclass

from orchestrator.errors import FatalInfraError


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def detached_files(output: str) -> dict[str, str]:
    """The host files a ``fire_detached`` command writing to ``output`` leaves, shell-quoted:
    its stdout ('out'), stderr ('err') and exit status ('rc', written last)."""
    return {suffix: shlex.quote(f"{output}.{suffix}") for suffix in ("out", "err", "rc")}


def detached_reads(output: str) -> list[str]:
    """The commands ``detached_result`` runs: exit status, stdout, stderr (for shell_batch.py)."""
    files = detached_files(output)
    return [f"cat {files['rc']} 2>/dev/null", f"cat {files['out']}", f"cat {files['err']}"]


class CommandFailed(FatalInfraError):
    """A command run with ``check=True`` exited non-zero; ``result`` says how."""

    def __init__(self, result: CommandResult, host: str):
        self.result = result
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        super().__init__(f"{host}: `{result.command}` exited {result.exit_code}: {detail[0]}")


class ShellProtocol(abc.ABC):
    """Run POSIX sh commands on the host (no agent, no python needed there)."""

    @abc.abstractmethod
    def run(self, command: str, *, timeout: float, check: bool = True) -> CommandResult:
        """Run ``command`` and wait for it. ``check`` raises ``FatalInfraError`` on a
        non-zero exit. A dropped or silent connection raises ``RetryableInfraError``."""

    @abc.abstractmethod
    def fire_detached(self, command: str, *, timeout: float, output: str) -> None:
        """Start ``command`` on the host so that it runs after this call has returned.

        Used for the injection that may panic the host: the SSH call must never be the one
        left hanging on a dead kernel. Its stdout, stderr and exit status land in the host
        files ``output``.out/.err/.rc (earlier ones removed first); the .rc appears only once
        the command has finished, so its presence means "it returned"."""

    @abc.abstractmethod
    def fresh(self) -> "ShellProtocol":
        """A new, unconnected shell to the same host with the same settings, for a probe
        that must not wait behind (or disturb) this one's connection."""

    def adopt(self, other: "ShellProtocol") -> None:
        """Drop this shell's connection and take over ``other``'s live one (a probe's that just
        got through), so that the next command needs no handshake of its own; ``other`` is left
        unconnected. A shell that cannot just closes both, and connects when next used."""
        other.close()
        self.close()

    def detached_result(self, *, output: str, timeout: float) -> CommandResult | None:
        """What the ``fire_detached`` command writing to ``output`` did; None while it has
        not finished (or never started)."""
        exit_code = self._detached_exit_code(output, timeout)
        if exit_code is None:
            return None
        _, read_out, read_err = detached_reads(output)
        out, err = (self.run(read, timeout=timeout, check=False).stdout for read in (read_out, read_err))
        return CommandResult(f"(detached) {output}", exit_code, out, err, 0.0)

    def detached_finished(self, *, output: str, timeout: float) -> bool:
        """The ``fire_detached`` command writing to ``output`` has returned. One short
        command: cheap enough to poll."""
        return self._detached_exit_code(output, timeout) is not None

    def _detached_exit_code(self, output: str, timeout: float) -> int | None:
        rc = self.run(detached_reads(output)[0], timeout=timeout, check=False)
        return int(rc.stdout.strip()) if rc.ok and rc.stdout.strip().isdigit() else None

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the connection; the next ``run`` opens a new one (hosts reboot under us)."""
