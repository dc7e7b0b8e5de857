"""Deciding a case from its evidence: pure code over text, no I/O.

The cycle gathers what the host said (console lines since the injection, the dump's
dmesg, VMCOREINFO, the injection's exit status, a live dmesg for survive cases) into an
``Observation``; ``judge`` turns it into findings. An empty list means pass.

Each finding names who is to blame. Only the kernel's own behaviour (a wrong or missing
panic, a wrong action line, a host that kept running) makes a case "fail"; a dump that never
came, came incomplete or unreadable is the crash kernel's (kdump), and a console that missed
what the dump shows is the lab's: those make it an "error" (cycle/machine.py decides).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config.playbook import Expectation
from orchestrator.errors import KDUMP, KERNEL, LAB, ORCHESTRATOR, BlamedText
from orchestrator.kernel import signatures as sig
from orchestrator.tunables import CLOCK_SLACK_S


#: expected signature -> the panic message it starts with; these panics name no pfn (the
#: firmware's fatal report panics before memory_failure() runs)
NO_PFN_PANICS = {"ghes_fatal": "GHES: Fatal hardware error"}
NO_PFN_SIGNATURES = ("machine-check", *NO_PFN_PANICS)


class Finding(BlamedText):
    """A reason the case did not pass, and who is to blame for it (errors.BLAMES)."""

    default_blame = KERNEL


@dataclass(frozen=True)
class Observation:
    pfn: int
    console: tuple[str, ...] = ()           # console lines since the injection (empty without SOL)
    dump_dmesg: str | None = None           # dmesg from the new dump, None if there is no dump
    live_dmesg: str | None = None           # dmesg read over SSH (survive cases)
    vmcoreinfo: dict = field(default_factory=dict)
    inject_epoch: float | None = None       # host clock (date +%s) just before the injection
    dump_incomplete: bool = False
    rebooted: bool = False                  # boot_id changed
    console_expected: bool = True           # the host has a console we listen to


def _events(text_lines) -> list[sig.KernelEvent]:
    events = []
    for line in text_lines:
        event = sig.parse_line(line)
        if event is not None:
            events.append(event)
    return events


def _for_pfn(events, pfn: int) -> list[sig.KernelEvent]:
    return [e for e in events if e.pfn == pfn]


def _panic_kind_ok(event: sig.KernelEvent, want: str) -> bool:
    if want == "machine-check":
        return event.kind == "panic_other" and "machine check" in (event.message or "").lower()
    if want == "new":
        return event.kind == "panic_mf"
    if want == "legacy":
        return event.kind == "panic_legacy"
    if want in NO_PFN_PANICS:
        return event.kind == "panic_other" and (event.message or "").startswith(NO_PFN_PANICS[want])
    return event.kind in ("panic_mf", "panic_legacy")


def _action_reasons(events, pfn: int, exp: Expectation, source: str) -> list[Finding]:
    if exp.action_label is None and exp.action_result is None:
        return []
    actions = [e for e in _for_pfn(events, pfn) if e.kind == "action"]
    if not actions:
        return [Finding(f"{source}: no 'recovery action for ...' line for pfn {pfn:#x}")]
    got = actions[-1]
    reasons = []
    if exp.action_label is not None and got.label != exp.action_label:
        reasons.append(Finding(f"{source}: action label is {got.label!r}, expected {exp.action_label!r}: "
                               f"{got.text}"))
    if exp.action_result is not None and got.result != exp.action_result:
        reasons.append(Finding(f"{source}: action result is {got.result!r}, expected {exp.action_result!r}: "
                               f"{got.text}"))
    return reasons


def judge_panic(obs: Observation, exp: Expectation) -> list[Finding]:
    """What a case that must panic did wrong, and whose fault each finding is."""
    reasons: list[Finding] = []
    console = _events(obs.console)
    dump = _events(obs.dump_dmesg.splitlines()) if obs.dump_dmesg else []
    sources = [("console", console)] if obs.console_expected else []
    if exp.dump:
        sources.append(("dump dmesg", dump))
    seen_any_panic = False
    panic_texts, missing = {}, []
    for name, events in sources:
        panic = sig.find_panic(events)
        if panic is None:
            missing.append(name)
            continue
        seen_any_panic = True
        panic_texts[name] = panic
        if not _panic_kind_ok(panic, exp.signature):
            what = exp.signature if exp.signature in NO_PFN_SIGNATURES else f"{exp.signature} memory-failure"
            reasons.append(Finding(f"{name}: panic is not the expected {what} signature: {panic.text}"))
        elif exp.signature not in NO_PFN_SIGNATURES and panic.pfn != obs.pfn:
            got = "none" if panic.pfn is None else f"{panic.pfn:#x}"
            reasons.append(Finding(f"{name}: panic names pfn {got}, injected {obs.pfn:#x}: {panic.text}"))
        reasons += _action_reasons(events, obs.pfn, exp, name)
    reasons += _missing_panic(missing, seen_any_panic)
    if not sources:
        reasons.append(Finding("no evidence source: neither a console nor a dump is expected for this case",
                               ORCHESTRATOR))
    if exp.dump:
        reasons += _dump_reasons(obs)
    if len(panic_texts) == 2:
        a, b = panic_texts["console"], panic_texts["dump dmesg"]
        if (a.kind, a.pfn, a.message) != (b.kind, b.pfn, b.message):
            reasons.append(Finding(f"console and dump disagree: console {a.text!r} vs dump {b.text!r}"))
    if not seen_any_panic and not obs.rebooted:
        reasons.append(Finding("the host did not reboot: it kept running after the injection"))
        if obs.live_dmesg is not None:
            live = [e for e in _for_pfn(_events(obs.live_dmesg.splitlines()), obs.pfn) if e.kind == "action"]
            reasons += ([Finding(f"dmesg: {e.text}") for e in live]
                        or [Finding(f"dmesg: no memory-failure line for pfn {obs.pfn:#x}")])
    return reasons


def _missing_panic(missing: list[str], seen_elsewhere: bool) -> list[Finding]:
    """A source without the panic line: the kernel's fault when no source has one; when the
    other source shows the panic, the missing one lost it (the console's lab, or kdump)."""
    if not seen_elsewhere:
        return [Finding(f"{name}: no kernel panic line") for name in missing]
    return [Finding(f"{name}: no kernel panic line, although the other source shows it",
                    LAB if name == "console" else KDUMP) for name in missing]


def _dump_reasons(obs: Observation) -> list[Finding]:
    if obs.dump_dmesg is None:
        return [Finding("no new kdump dump was written", KDUMP)]
    reasons = []
    if obs.dump_incomplete:
        reasons.append(Finding("the dump is incomplete", KDUMP))
    crashtime = obs.vmcoreinfo.get("CRASHTIME")
    if crashtime is None:
        reasons.append(Finding("VMCOREINFO has no CRASHTIME", KDUMP))
    elif obs.inject_epoch is not None and int(crashtime) + CLOCK_SLACK_S < obs.inject_epoch:
        reasons.append(Finding(f"dump CRASHTIME {crashtime} is before the injection ({obs.inject_epoch:.0f}): "
                               "a stale dump, no new one", KDUMP))
    return reasons


def judge_survive(obs: Observation, exp: Expectation) -> list[Finding]:
    """What a case that must survive did wrong (always the kernel's doing)."""
    reasons: list[Finding] = []
    console = _events(obs.console)
    live = _events(obs.live_dmesg.splitlines()) if obs.live_dmesg is not None else []
    for name, events in (("console", console), ("dmesg", live)):
        panic = sig.find_panic(events)
        if panic is not None:
            reasons.append(Finding(f"{name}: the kernel panicked: {panic.text}"))
    if obs.rebooted:
        reasons.append("the host rebooted (boot_id changed)")
    if obs.live_dmesg is None:
        reasons.append("the host did not answer after the injection")
    else:
        reasons += _action_reasons(live, obs.pfn, exp, "dmesg")
    if not exp.memory_failure:
        ran = [e for name, events in (("console", console), ("dmesg", live)) for e in _for_pfn(events, obs.pfn)]
        reasons += [Finding(f"memory_failure() ran on pfn {obs.pfn:#x}, expected it not to: {e.text}")
                    for e in ran[:1]]
    return reasons
