"""Gathering what the host said into an ``Observation`` and judging it (cycle/verify.py),
keeping the lines that support the verdict as evidence."""

from __future__ import annotations

from orchestrator.config.playbook import Expectation
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import BootFacts
from orchestrator.cycle.record import CaseRecord
from orchestrator.cycle.steps import Back, Collected, Injected, Observed, Targeted
from orchestrator.cycle.verify import Observation, judge_panic, judge_survive
from orchestrator.errors import FatalInfraError
from orchestrator.kernel import signatures as sig


def verify(h: HostHandles, expect: Expectation, *, before: BootFacts, targeted: Targeted, injected: Injected,
           observed: Observed, back: Back, collected: Collected, record: CaseRecord) -> list[str]:
    """Reasons the case failed; empty when it passed. Raises ``FatalInfraError`` when the
    evidence needed to judge was never there (a console down while the panic could come)."""
    pfn, dump = targeted.target.pfn, collected.dump
    console = tuple(line.text for line in h.console.lines(injected.console_mark)) if h.console else ()
    _keep_evidence(record, console, dump.dmesg if dump else None, pfn)
    panic_case = expect.outcome == "panic"
    if panic_case and observed.panic is None and observed.console_gap:
        # Without the console the panic case cannot be judged from both sources.
        raise FatalInfraError("the console was down while the panic was expected")
    obs = Observation(pfn=pfn, console=console, dump_dmesg=dump.dmesg if dump else None,
                      live_dmesg=collected.live_dmesg, vmcoreinfo=dict(dump.vmcoreinfo) if dump else {},
                      inject_epoch=injected.epoch, dump_incomplete=bool(dump and dump.incomplete),
                      rebooted=back.after is not None and back.after.boot_id != before.boot_id,
                      console_expected=h.console is not None)
    return judge_panic(obs, expect) if panic_case else judge_survive(obs, expect)


def _keep_evidence(record: CaseRecord, console: tuple[str, ...], dump_dmesg: str | None, pfn: int) -> None:
    for text in console:
        if sig.MF_LINE.search(text) or sig.PANIC_LINE.search(text):
            record.add_evidence("console", text)
    for text in (dump_dmesg or "").splitlines():
        event = sig.parse_line(text)
        if event is not None and (event.pfn == pfn or event.kind.startswith("panic")):
            record.add_evidence("dump-dmesg", text.strip())
