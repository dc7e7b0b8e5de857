"""The cycle after the injection was fired: observe, then either judge a kernel that kept
running, or wait out the panic (kdump, reboot, or BMC recovery), collect the new dump and
judge that. Part of ``CaseCycle`` (orchestrator/cycle/machine.py), kept apart to stay readable.

Observation never trusts one channel alone: the console may be absent or down, and the
injection runs detached, so "no panic yet" only means something once the injection's exit
status is on the host (it returned) or the host stops answering (it died).
"""

from __future__ import annotations

import time

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from orchestrator.errors import FatalInfraError, InfraError, RetryableInfraError
from orchestrator.cycle.hostwait import read_boot_facts, wait_for_boot
from orchestrator.kernel import signatures as sig
from orchestrator.cycle.recovery import recover_wedged_host
from orchestrator.cycle.verify import Observation, judge_panic, judge_survive
from orchestrator.tunables import CLOCK_SLACK_S, INJECTION_POLL_S, LOST_AFTER_FAILURES, SETTLE_S

#: where the detached injection's .rc/.out/.err land (ShellProtocol.fire_detached)
INJECT_OUTPUT = "/tmp/orch-inject"


class AfterInjection:
    """Mixin of ``CaseCycle``: uses its ``h``, ``ctx``, ``case``, ``_begin/_enter/_deadline/_evidence``."""

    # -- observing -------------------------------------------------------------------------
    def _observe(self) -> str:
        """'panicked' (a panic line on the console), 'returned' (the injection's exit status is
        on a host that still answers) or 'lost' (the host stopped answering)."""
        from orchestrator.cycle.machine import State

        t0 = self._begin()
        panic_case = self.ctx.expect.outcome == "panic"
        if panic_case and self._watch_for_panic(self._deadline("panic")):
            outcome = "panicked"
        else:
            outcome = self._injection_outcome(self._deadline("panic" if panic_case else "survive"))
            if outcome == "returned" and self._watch_for_panic(SETTLE_S):
                outcome = "panicked"
        note = {"panicked": "seen on console", "returned": "injection returned; host answers",
                "lost": "host stopped answering" + ("" if self._console_ok() else "; no console")}[outcome]
        self._enter(State.SURVIVED if outcome == "returned" else State.PANICKED, t0, note)
        return outcome

    def _console_ok(self) -> bool:
        console = self.h.console
        ok = console is not None and console.healthy()
        if console is not None and not ok:
            self.ctx.console_gap = True
        return ok

    def _watch_for_panic(self, timeout: float) -> bool:
        if not self._console_ok():
            return False
        line = self.h.console.wait_for(sig.PANIC_LINE, since=self.ctx.console_mark, timeout=timeout)
        if line is None:
            self._console_ok()          # a console that died during the wait is a gap, not silence
            return False
        self.ctx.panic_noticed_t = time.monotonic()
        self.ctx.panic_t = line.t
        self.ctx.panic_line = sig.parse_line(line.text)
        self._evidence("console", line.text, line.t)
        return True

    def _injection_outcome(self, deadline_s: float) -> str:
        end, failures = time.monotonic() + deadline_s, 0
        while time.monotonic() < end:
            if self._watch_for_panic(0):
                return "panicked"
            try:
                finished = self.h.poll_shell.detached_finished(output=INJECT_OUTPUT, timeout=5)
                failures = 0
                if finished:
                    return "returned"
            except RetryableInfraError:
                failures += 1
                self.h.poll_shell.close()
                if failures >= LOST_AFTER_FAILURES:
                    return "lost"
            self.h.pause(INJECTION_POLL_S)
        return "returned"   # still answering, the injection still running: judge what it did so far

    # -- a kernel that kept running ----------------------------------------------------------
    def _judge_alive(self) -> list[str]:
        live = done = None
        try:
            self.ctx.after = _retry_transient(read_boot_facts, self.h.shell)
            live = _retry_transient(lambda: self.h.shell.run("dmesg", timeout=self._deadline("collect"),
                                                             check=False).stdout)
            done = _retry_transient(lambda: self.h.shell.detached_result(output=INJECT_OUTPUT, timeout=15))
        except InfraError as exc:
            self._evidence("ssh", f"the host stopped answering after the injection returned: {exc}")
        if done is not None:
            said = " ".join((done.stdout + done.stderr).split())
            self._evidence("inject", f"exit status {done.exit_code}" + (f", output: {said}" if said else ""))
        return self._verify(live_dmesg=live)

    # -- a kernel that panicked (or vanished) ------------------------------------------------
    def _after_panic(self) -> list[str]:
        self._await_reboot()
        self._collect()
        return self._verify()

    def _await_reboot(self) -> None:
        from orchestrator.cycle.machine import State

        t0 = self._begin()
        try:
            self.ctx.after = wait_for_boot(self.h.poll_shell, deadline_s=self._deadline("dump"), state="dump",
                                           not_boot_id=self.ctx.before.boot_id, sleep=self.h.pause)
            note = "back on SSH with a new boot_id"
        except InfraError as exc:
            self._enter(State.WEDGED, t0, str(exc))
            t0 = self._begin()
            self.ctx.after = recover_wedged_host(self.h, self.ctx.before.boot_id, self._deadline("wedge"),
                                                 self.ctx.recovery, nmi_grace_s=self._deadline("nmi"))
            note = "; ".join(self.ctx.recovery)
        self.h.shell.close()   # its connection belonged to the previous boot
        self._enter(State.DUMPED, t0, note)

    def _collect(self) -> None:
        from orchestrator.cycle.machine import State

        t0 = self._begin()
        kdump, shell = self.h.kdump, self.h.shell
        listed = _retry_transient(kdump.list_dumps, shell)
        rewritten = _retry_transient(kdump.written_since, shell, self.ctx.inject_epoch - CLOCK_SLACK_S)
        new = sorted({d for d in listed if d not in self.ctx.dumps_before} | set(rewritten), key=kdump.sort_key)
        if new:
            # Only a dump made after the injection counts; with several, the newest.
            self.ctx.dump = _retry_transient(kdump.collect, shell, new[-1])
            if len(new) > 1:
                self._evidence("dump", f"{len(new)} new dumps: {', '.join(new)}; using the newest")
        self._enter(State.COLLECTED, t0, self.ctx.dump.dump_id if self.ctx.dump else "no new dump")

    # -- judging -----------------------------------------------------------------------------
    def _verify(self, *, live_dmesg: str | None = None) -> list[str]:
        from orchestrator.cycle.machine import State

        t0 = self._begin()
        ctx, pfn = self.ctx, self.ctx.target.pfn
        console = tuple(line.text for line in self.h.console.lines(ctx.console_mark)) if self.h.console else ()
        self._keep_evidence(console, ctx.dump.dmesg if ctx.dump else None, pfn)
        panic_case = ctx.expect.outcome == "panic"
        if panic_case and ctx.panic_line is None and ctx.console_gap:
            # Without the console the panic case cannot be judged from both sources.
            raise FatalInfraError("the console was down while the panic was expected")
        dump = ctx.dump
        obs = Observation(pfn=pfn, console=console, dump_dmesg=dump.dmesg if dump else None,
                          live_dmesg=live_dmesg, vmcoreinfo=dict(dump.vmcoreinfo) if dump else {},
                          inject_epoch=ctx.inject_epoch, dump_incomplete=bool(dump and dump.incomplete),
                          rebooted=ctx.after is not None and ctx.after.boot_id != ctx.before.boot_id,
                          console_expected=self.h.console is not None)
        reasons = judge_panic(obs, ctx.expect) if panic_case else judge_survive(obs, ctx.expect)
        self._enter(State.VERIFIED, t0, "ok" if not reasons else f"{len(reasons)} problem(s)")
        return reasons

    def _keep_evidence(self, console: tuple[str, ...], dump_dmesg: str | None, pfn: int) -> None:
        for text in console:
            if sig.MF_LINE.search(text) or sig.PANIC_LINE.search(text):
                self._evidence("console", text)
        for text in (dump_dmesg or "").splitlines():
            event = sig.parse_line(text)
            if event is not None and (event.pfn == pfn or event.kind.startswith("panic")):
                self._evidence("dump-dmesg", text.strip())


def _retry_transient(call, *args):
    """A freshly rebooted host may drop the first connection or two: retry those only."""
    for attempt in Retrying(stop=stop_after_attempt(3), wait=wait_fixed(1.0),
                            retry=retry_if_exception_type(RetryableInfraError), reraise=True):
        with attempt:
            return call(*args)
