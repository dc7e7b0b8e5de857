"""The arm journal: before a case arms a host, the host's original sysctls and crash-kernel
state are written ON THE HOST (its state folder, a disk that survives panics), once.

Restoring reads that record, never the controller's memory, so a host left armed by a
controller that was killed (or by a run that failed to restore) is put back by whoever comes
next: the next run's preflight, or an operator's ``orchestrator disarm``. Recording is
refused while a record exists: the originals must never be overwritten by armed values.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from orchestrator.errors import FatalInfraError, OrchestratorError
from orchestrator.kernel.kdump import KDUMP_LOADED_CMD, kdump_loaded
from orchestrator.kernel.sysctl import equal_test, read_sysctls, write_sysctls
from orchestrator.kernel.sysctl import read_command as sysctl_read_command, write_command as sysctl_write_command
from orchestrator.protocols import shell_batch as batch
from orchestrator.protocols.shell_batch import Section
from orchestrator.protocols.shell import ShellProtocol
from orchestrator.tunables import KDUMP_RELOAD_TIMEOUT_S

JOURNAL = "armed"
#: Distributions reload their crash kernel differently; the lab guests answer to kdump-config.
RELOAD_KDUMP = "kdump-config load || kdumpctl restart || systemctl restart kdump"
_EXISTS = 73


class LeftArmed(FatalInfraError):
    """The host could not be put back as its journal records: it is still armed."""


@dataclass(frozen=True)
class ArmRecord:
    sysctls: tuple[tuple[str, str], ...]     # original values, as read before arming
    kdump_loaded: bool
    run_id: str = ""
    case: str = ""
    boot_id: str = ""                        # the boot that was armed: a later boot has its defaults back

    def lines(self) -> str:
        head = [f"run_id={self.run_id}", f"case={self.case}", f"kdump_loaded={int(self.kdump_loaded)}",
                f"boot_id={self.boot_id}"]
        return "\n".join(head + [f"sysctl.{name}={value}" for name, value in self.sysctls]) + "\n"

    @classmethod
    def parse(cls, text: str) -> "ArmRecord":
        fields = [line.split("=", 1) for line in text.splitlines() if "=" in line]
        plain = {k: v for k, v in fields if not k.startswith("sysctl.")}
        return cls(sysctls=tuple((k[len("sysctl."):], v) for k, v in fields if k.startswith("sysctl.")),
                   kdump_loaded=plain.get("kdump_loaded") == "1", run_id=plain.get("run_id", ""),
                   case=plain.get("case", ""), boot_id=plain.get("boot_id", ""))

    def describe(self) -> str:
        return f"run {self.run_id or '?'}, case {self.case or '?'}"


def _path(state_dir: str) -> str:
    return shlex.quote(f"{state_dir.rstrip('/')}/{JOURNAL}")


def read_command(state_dir: str) -> str:
    """The command ``read_record`` runs (for protocols/shell_batch.py)."""
    return f"cat {_path(state_dir)} 2>/dev/null"


def read_record(shell: ShellProtocol, state_dir: str) -> ArmRecord | None:
    """The host's pending record: None when the host is not armed by anyone."""
    result = shell.run(read_command(state_dir), timeout=15, check=False)
    return ArmRecord.parse(result.stdout) if result.ok and result.stdout.strip() else None


def record_originals(shell: ShellProtocol, state_dir: str, names, *, run_id: str, case: str,
                     boot_id: str = "") -> ArmRecord:
    """Read the sysctls about to be changed and the crash kernel's state, and write them to
    the journal; ``FatalInfraError`` if a record is already there (restore it first)."""
    record = read_originals(shell, names, run_id=run_id, case=case, boot_id=boot_id)
    write_record(shell, state_dir, record)
    return record


def read_originals(shell: ShellProtocol, names, *, run_id: str, case: str, boot_id: str = "") -> ArmRecord:
    """What the journal will hold: the sysctls about to be changed and the crash kernel's state."""
    values = {k: v for k, v in read_sysctls(shell, names).items() if v is not None}
    return ArmRecord(sysctls=tuple(sorted(values.items())), kdump_loaded=kdump_loaded(shell),
                     run_id=run_id, case=case, boot_id=boot_id)


def write_command(state_dir: str, record: ArmRecord) -> str:
    """The command ``write_record`` runs (for protocols/shell_batch.py): exits 73 when a record exists."""
    path, tmp = _path(state_dir), shlex.quote(f"{state_dir.rstrip('/')}/{JOURNAL}.tmp")
    return (f"umask 077; mkdir -p {shlex.quote(state_dir)} || exit 1; [ -e {path} ] && exit {_EXISTS}; "
            f"printf '%s' {shlex.quote(record.lines())} > {tmp} && sync {tmp} 2>/dev/null; mv {tmp} {path}")


def write_record(shell: ShellProtocol, state_dir: str, record: ArmRecord) -> None:
    """Write ``record`` as the host's journal; ``FatalInfraError`` if one is already there."""
    result = shell.run(write_command(state_dir, record), timeout=15, check=False)
    if result.exit_code == _EXISTS:
        raise FatalInfraError(f"an arm journal is already on the host at {state_dir}/{JOURNAL}: restore it first")
    if not result.ok:
        raise FatalInfraError(f"cannot write the arm journal in {state_dir}: {result.stderr.strip()}")


def reloads_kdump(record: ArmRecord, boot_id: str | None) -> bool:
    """The restore must see the crash kernel loaded (and load it if need be): it was loaded
    when the host was armed, and the host has not booted again since (a new boot loaded its
    own, ``boot_id`` being the host's boot now, when known)."""
    rebooted = bool(boot_id and record.boot_id and boot_id != record.boot_id)
    return record.kdump_loaded and not rebooted


def restore_sections(state_dir: str, record: ArmRecord, boot_id: str | None) -> list[Section]:
    """What ``restore`` runs when all goes well, in one round trip (protocols/shell_batch.py):
    the values now, the originals written back and read again, the crash kernel's state, and
    the journal dropped by the host itself only if all of that holds. A step before the
    restore may send these ahead with its own commands (cycle/ahead.py)."""
    names = [name for name, _ in record.sysctls]
    reads = [Section(sysctl_read_command(names))] if names else []
    writes = [Section(sysctl_write_command(dict(record.sysctls)))] if names else []
    kdump = [Section(KDUMP_LOADED_CMD)] if reloads_kdump(record, boot_id) else []
    return [*reads, *writes, *reads, *kdump, Section(disarm_command(state_dir, record, boot_id), 15)]


def disarm_command(state_dir: str, record: ArmRecord, boot_id: str | None) -> str:
    """Drop the journal if, and only if, the host is now as ``record`` says (exit 1 otherwise):
    checked on the host, so that the check and the drop can travel with the restore's writes."""
    checks = [equal_test(name, value) for name, value in record.sysctls]
    if reloads_kdump(record, boot_id):
        checks.append(f'[ "$({KDUMP_LOADED_CMD} 2>/dev/null)" = 1 ]')
    return " && ".join([*checks, f"rm -f {_path(state_dir)}"])


def restore(shell: ShellProtocol, state_dir: str, record: ArmRecord, *, timeout: float,
            boot_id: str | None = None) -> list[str]:
    """Put the host back as ``record`` says and drop the journal; returns what was done.
    ``LeftArmed`` when any of it did not take (the journal then stays for the next try).

    ``boot_id``: the host's boot now, when known. A host that rebooted since it was armed
    loads its crash kernel by itself while booting, so it is not loaded a second time.
    Every original is written back, changed or not (writing a value a sysctl already holds
    changes nothing), so that the whole restore is one round trip known in advance: on a
    lab guest a restore after a panic took two, 0.3-0.4 s of the case's wall time."""
    done = []
    batch.prefetch(shell, restore_sections(state_dir, record, boot_id))
    try:
        current = read_sysctls(shell, [name for name, _ in record.sysctls])
        changed = {k: v for k, v in record.sysctls if current.get(k) != v}
        write_sysctls(shell, dict(record.sysctls))
        if changed:
            done.append("restored " + " ".join(f"{k}={v}" for k, v in changed.items()))
        if reloads_kdump(record, boot_id) and not kdump_loaded(shell):
            shell.run(RELOAD_KDUMP, timeout=max(timeout, KDUMP_RELOAD_TIMEOUT_S), check=False)
            if not kdump_loaded(shell):
                raise LeftArmed("the crash kernel was loaded before the case and cannot be loaded again")
            done.append("reloaded the crash kernel")
        if not shell.run(disarm_command(state_dir, record, boot_id), timeout=15, check=False).ok:
            raise LeftArmed(f"restore of {record.describe()}: the host does not hold its recorded values "
                            f"after they were written back")
    except LeftArmed:
        raise
    except OrchestratorError as exc:
        raise LeftArmed(f"restore of {record.describe()} failed: {exc}") from exc
    return done
