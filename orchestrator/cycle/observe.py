"""Watching a host after the injection was fired: did it panic, did the injection return,
or did the host stop answering? And, for a host that kept running, what it says now.

Observation never trusts one channel alone: the console may be absent or down, and the
injection runs detached, so "no panic yet" only means something once the injection's exit
status is on the host (it returned) or the host stops answering (it died).
"""

from __future__ import annotations

from collections.abc import Sequence

import time
from typing import Callable

from orchestrator.config.playbook import Expectation
from orchestrator.cycle import ahead
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import read_boot_facts, retry_transient
from orchestrator.cycle.record import CaseRecord
from orchestrator.cycle.steps import LOST, PANICKED, RETURNED, Back, Collected, Injected, Observed, PanicSeen
from orchestrator.errors import LAB, FatalInfraError, InfraError, RetryableInfraError
from orchestrator.kernel import signatures as sig
from orchestrator.protocols.shell import CommandResult
from orchestrator.protocols.shell_batch import Section
from orchestrator.tunables import INJECTION_POLL_S, LOST_AFTER_FAILURES, SETTLE_S


class _PanicWatch:
    """The console side of one observation; remembers whether the console was ever down."""

    def __init__(self, h: HostHandles, injected: Injected, record: CaseRecord):
        self.console, self.injected, self.record = h.console, injected, record
        self.gap = False
        self.seen: PanicSeen | None = None

    def console_ok(self) -> bool:
        ok = self.console is not None and self.console.healthy()
        if self.console is not None and not ok:
            self.gap = True
        return ok

    def wait(self, timeout: float) -> bool:
        if not self.console_ok():
            return False
        line = self.console.wait_for(sig.PANIC_LINE, since=self.injected.console_mark, timeout=timeout)
        if line is None:
            self.console_ok()          # a console that died during the wait is a gap, not silence
            return False
        self.seen = PanicSeen(event=sig.parse_line(line.text), t=line.t, noticed_t=time.monotonic())
        self.record.add_evidence("console", line.text, line.t - self.injected.t)
        return True


def observe(h: HostHandles, expect: Expectation, injected: Injected, deadlines: dict,
            record: CaseRecord, *, settle_s: float = SETTLE_S) -> tuple[Observed, str]:
    """How the injection ended (steps.PANICKED, RETURNED or LOST) and the timing note."""
    watch = _PanicWatch(h, injected, record)
    panic_case = expect.outcome == "panic"
    if panic_case and watch.wait(deadlines["panic"]):
        how = PANICKED
    else:
        how = _injection_outcome(h, watch, injected.output, deadlines["panic" if panic_case else "survive"])
        if how == RETURNED and watch.wait(settle_s):
            how = PANICKED
    note = {PANICKED: "seen on console", RETURNED: "injection returned; host answers",
            LOST: "host stopped answering" + ("" if watch.console_ok() else "; no console")}[how]
    return Observed(how=how, panic=watch.seen, console_gap=watch.gap), note


def _injection_outcome(h: HostHandles, watch: _PanicWatch, output: str, deadline_s: float) -> str:
    end, failures = time.monotonic() + deadline_s, 0
    while time.monotonic() < end:
        if watch.wait(0):
            return PANICKED
        try:
            finished = h.poll_shell.detached_finished(output=output, timeout=5)
            failures = 0
            if finished:
                return RETURNED
        except RetryableInfraError:
            failures += 1
            h.poll_shell.close()
            # With a console that stayed up and shows no panic, SSH going quiet is the
            # network's trouble, not the kernel's death: keep looking until the deadline.
            # Calling it lost at once sent a live host to wait out the dump deadline
            # (240 s) for a reboot that never comes, then power-cycled it.
            if failures >= LOST_AFTER_FAILURES and not _console_watching(watch):
                return LOST
        h.pause(INJECTION_POLL_S)
    # still answering, the injection still running: judge what it did so far
    return LOST if failures >= LOST_AFTER_FAILURES else RETURNED


def _console_watching(watch: _PanicWatch) -> bool:
    """A console up now and all along since the injection: its silence means no panic."""
    return watch.console_ok() and not watch.gap


def read_survivor(h: HostHandles, injected: Injected, deadline_s: float, record: CaseRecord,
                  refusal: Callable[[CommandResult], str | None] = lambda done: None,
                  then: Sequence[Section] = ()) -> tuple[Back, Collected]:
    """A host whose injection returned: its boot now, its dmesg and the injection's own exit
    status. A host that stops answering here is evidence, not an error: the judge decides.
    An injection the kernel or firmware refused (``refusal`` names why: the injector's) is an
    error, not a survival: nothing was injected."""
    after = live = done = None
    ahead.survivor(h, injected.output, deadline_s, then)
    try:
        after = retry_transient(read_boot_facts, h.shell)
        live = retry_transient(lambda: h.shell.run("dmesg", timeout=deadline_s, check=False).stdout)
        done = retry_transient(lambda: h.shell.detached_result(output=injected.output, timeout=15))
    except InfraError as exc:
        record.add_evidence("ssh", f"the host stopped answering after the injection returned: {exc}")
    if done is not None:
        said = " ".join((done.stdout + done.stderr).split())
        record.add_evidence("inject", f"exit status {done.exit_code}" + (f", output: {said}" if said else ""))
        refused = refusal(done)
        if refused:
            raise FatalInfraError(str(refused), blame=getattr(refused, "blame", LAB))
    return Back(after=after, how="kept running"), Collected(live_dmesg=live)
