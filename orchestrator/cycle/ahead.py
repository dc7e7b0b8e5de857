"""The commands each step of the cycle is about to run, sent ahead in one round trip.

Measured on a TCG lab guest (bench/bench_orchestrator.py, commands.log): a case ran 16 SSH
commands before its injection and ~7 after the host came back, each a round trip of
60-140 ms, which made a panic case 1.3x its host's own panic -> dump -> reboot time. The steps
still call the kernel/ helpers one command at a time, and each still says what failed; a
step only tells the shell first which commands will come (cycle/prefetch.py), so the host
answers them all in one round trip. A helper that runs something else than foreseen (a host
left armed is restored, a read is retried) just runs it: nothing is answered from the batch
after a command that was not in it.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.config.playbook import Case
from orchestrator.cycle import arm_journal
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import BOOT_FACTS_CMD
from orchestrator.kernel import sysctl
from orchestrator.kernel.facts import PROBE_CMD
from orchestrator.kernel.injectors import Injector
from orchestrator.kernel.kdump import KDUMP_LOADED_CMD
from orchestrator.kernel.pages import first_reads
from orchestrator.protocols.shell import ShellProtocol, detached_reads
from orchestrator.protocols.shell_batch import Section, prefetch
from orchestrator.tunables import KDUMP_COMMAND_TIMEOUT_S


def _reads(names) -> Section | None:
    return Section(sysctl.read_command(names)) if names else None


def _maybe(command: str | None, timeout: float = 30.0, stop: bool = False) -> Section | None:
    return Section(command, timeout, stop) if command else None


def preflight(h: HostHandles, case: Case, injector: Injector) -> None:
    """Preflight's reads, and the arm step's (the originals it journals): a host that is
    up answers all of them at once."""
    names = [name for name, _ in case.sysctls]
    prefetch(h.shell, [
        Section(BOOT_FACTS_CMD, 15),
        None if h.per_boot.knows("kernel") else Section(PROBE_CMD),
        Section(arm_journal.read_command(h.host.state_dir), 15),
        _reads(case.limits.sysctls_present),
        None if h.per_boot.knows(("injector", case.injector)) else _maybe(injector.probe_command()),
        Section(h.kdump.list_command(), KDUMP_COMMAND_TIMEOUT_S),
        _reads(names),
        Section(KDUMP_LOADED_CMD),
    ])


def arm(shell: ShellProtocol, case: Case, state_dir: str, record: arm_journal.ArmRecord) -> None:
    """Journal, then sysctls written and read back, then the crash kernel unloaded if asked;
    nothing after a journal that could not be written. Target selection's first read too."""
    wanted = dict(case.sysctls)
    prefetch(shell, [
        Section(arm_journal.write_command(state_dir, record), 15, stop_on_failure=True),
        _maybe(sysctl.write_command(wanted) if wanted else None),
        _reads(wanted),
        Section("kexec -p -u") if case.kdump == "unload" else None,
        *(Section(command) for command in first_reads(case.target)),
    ])


def inject(shell: ShellProtocol, injector: Injector, clear: str) -> None:
    """The injector's preparation and the clearing of a previous outcome (which reads the
    host's clock) before the injection is fired."""
    prefetch(shell, [_maybe(injector.prepare_command(), 60.0), Section(clear, 15)])


def collect(h: HostHandles, then: Sequence[Section] = (), named: str | None = None) -> None:
    """The two looks for a new dump, and the reads of the dump the console ``named``, if it
    did (when the looks confirm it, dump_reads sends nothing: one round trip less, 0.3-0.4 s
    on a just-booted lab guest); ``then``: the restore's commands."""
    prefetch(h.shell, [Section(h.kdump.list_command(), KDUMP_COMMAND_TIMEOUT_S),
                       Section(h.kdump.written_since_command(), KDUMP_COMMAND_TIMEOUT_S),
                       *(_reads_of(h, named) if named else ()), *then])


def dump_reads(h: HostHandles, dump_id: str, then: Sequence[Section] = ()) -> None:
    """The dump's file list and the files a complete dump of its layout is read from; ``then``:
    the restore's commands (arm_journal.restore_sections), the step that comes next."""
    prefetch(h.shell, [*_reads_of(h, dump_id), *then])


def _reads_of(h: HostHandles, dump_id: str) -> list[Section]:
    return [Section(command, KDUMP_COMMAND_TIMEOUT_S) for command in h.kdump.collect_reads(dump_id)]


def survivor(h: HostHandles, output: str, deadline_s: float, then: Sequence[Section] = ()) -> None:
    """A host that kept running: its boot now, its dmesg, the injection's outcome; ``then``:
    the restore's commands."""
    prefetch(h.shell, [Section(BOOT_FACTS_CMD, 15), Section("dmesg", deadline_s),
                       *(Section(command, 15) for command in detached_reads(output)), *then])
