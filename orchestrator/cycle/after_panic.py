"""After a panic (or a host that stopped answering): wait for the host to come back by
itself (kdump, then reboot), bring it back through its BMC when it does not, and collect
the dump the panic left.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.cycle import ahead
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import BootFacts, retry_transient, wait_for_boot
from orchestrator.cycle.record import CaseRecord
from orchestrator.cycle.recovery import recover_wedged_host
from orchestrator.cycle.steps import Back, Collected, Injected
from orchestrator.protocols.shell_batch import Section
from orchestrator.tunables import CLOCK_SLACK_S


def await_reboot(h: HostHandles, before: BootFacts, deadline_s: float) -> Back:
    """The host back on SSH with a new boot_id; raises ``InfraError`` when it stays away
    (the host is then wedged)."""
    # the shell's connection belonged to the previous boot: the answering probe's takes its place
    after = wait_for_boot(h.poll_shell, deadline_s=deadline_s, state="dump", not_boot_id=before.boot_id,
                          sleep=h.pause, keep_for=h.shell)
    h.per_boot.seen(after.boot_id)
    return Back(after=after, how="back on SSH with a new boot_id")


def recover(h: HostHandles, before: BootFacts, deadlines: dict, record: CaseRecord) -> Back:
    """NMI, then power cycles, through the BMC (cycle/recovery.py); every action is noted."""
    after = recover_wedged_host(h, before.boot_id, deadlines["wedge"], record.recovery,
                                nmi_grace_s=deadlines["nmi"])
    h.shell.close()
    h.per_boot.seen(after.boot_id)
    return Back(after=after, how="; ".join(record.recovery))


def collect_dump(h: HostHandles, dumps_before: tuple[str, ...], injected: Injected,
                 record: CaseRecord, then: Sequence[Section] = ()) -> Collected:
    """The dump made after the injection, if any. Only a dump that was not there before, or
    one rewritten since the injection (kdump names dumps by the minute), counts."""
    kdump, shell = h.kdump, h.shell
    console = h.console.lines(injected.console_mark) if h.console is not None else ()
    ahead.collect(h, then, named=kdump.named_in(line.text for line in console))
    listed = retry_transient(kdump.list_dumps, shell)
    rewritten = retry_transient(kdump.written_since, shell, injected.epoch - CLOCK_SLACK_S)
    new = sorted({d for d in listed if d not in dumps_before} | set(rewritten), key=kdump.sort_key)
    if not new:
        return Collected()
    ahead.dump_reads(h, new[-1], then)
    dump = retry_transient(kdump.collect, shell, new[-1])     # with several, the newest
    if len(new) > 1:
        record.add_evidence("dump", f"{len(new)} new dumps: {', '.join(new)}; using the newest")
    return Collected(dump=dump)
