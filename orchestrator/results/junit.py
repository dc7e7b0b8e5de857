"""junit.xml: one <testsuite> per host, one <testcase> per case (classname = host).

CI dashboards only understand JUnit, so the one distinction that matters is kept in the
element names: verdict "fail" (the kernel misbehaved) becomes <failure>, verdict "error"
(the lab failed us) becomes <error>, "skip" becomes <skipped>. Mixing them up would page
kernel people for a dead BMC.

Attributes follow the common Jenkins/xunit schema (timestamp without a zone, properties
per suite, system-out per testcase), so strict consumers accept the file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from .model import ERROR, FAIL, PASS, SKIP, CaseResult, HostFacts, RunResult

#: Characters XML 1.0 cannot carry at all, not even escaped. Console captures are full
#: of them (ANSI colour codes, NULs from a resetting UART).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_ELEMENT_FOR_VERDICT = {FAIL: "failure", ERROR: "error", SKIP: "skipped"}
_TYPE_FOR_VERDICT = {FAIL: "VerificationFailure", ERROR: "InfraError", SKIP: "skip"}


def printable(text: object) -> str:
    """Text with control characters shown as ``\\xNN`` (shared with the HTML writer):
    valid in XML and still readable to a person hunting an escape sequence."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def junit_xml(run: RunResult) -> str:
    root = ET.Element("testsuites", name=f"memfail {run.run_id}")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    total_time = 0.0
    facts_of = {h.host: h for h in reversed(run.hosts)}          # the first one listed, as before
    cases_of: dict[str, list[CaseResult]] = {}
    for case in run.cases:
        cases_of.setdefault(case.host, []).append(case)
    for host in hosts_in_order(run):
        suite = _suite(root, run, host, facts_of.get(host), cases_of.get(host, []))
        for key in totals:
            totals[key] += int(suite.get(key))
        total_time += float(suite.get("time"))
    root.attrib.update({key: str(value) for key, value in totals.items()})
    root.set("time", _seconds(total_time))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def hosts_in_order(run: RunResult) -> list[str]:
    """Hosts as the inventory listed them, then any host only seen in a case result."""
    return list(dict.fromkeys([*(h.host for h in run.hosts), *(c.host for c in run.cases)]))


def _suite(root: ET.Element, run: RunResult, host: str, facts: HostFacts | None,
           cases: list[CaseResult]) -> ET.Element:
    counts = {v: sum(1 for c in cases if c.verdict == v) for v in (FAIL, ERROR, SKIP)}
    suite = _sub(root, "testsuite", name=host, hostname=host, tests=len(cases),
                 failures=counts[FAIL], errors=counts[ERROR], skipped=counts[SKIP],
                 time=_seconds(sum(c.seconds for c in cases)))
    stamp = _schema_timestamp(cases[0].started_at if cases else run.started_at)
    if stamp:
        suite.set("timestamp", stamp)
    properties = ET.SubElement(suite, "properties")
    for name, value in _suite_properties(run, facts):
        if value not in (None, ""):
            _sub(properties, "property", name=name, value=value)
    for case in cases:
        _testcase(suite, case)
    return suite


def _suite_properties(run: RunResult, facts: HostFacts | None) -> list[tuple[str, object]]:
    props = [("run_id", run.run_id),
             ("inventory_path", run.inventory_path), ("inventory_digest", run.inventory_digest),
             ("playbook_path", run.playbook_path), ("playbook_digest", run.playbook_digest)]
    if facts:
        props += [("kernel_release", facts.kernel_release), ("arch", facts.arch),
                  ("platform", facts.platform), ("semantics", facts.semantics),
                  ("boot_id", facts.boot_id), ("preflight_error", facts.error)]
        props += [(f"sysctl.{key}", value) for key, value in sorted(facts.sysctls.items())]
    return props


def _testcase(suite: ET.Element, case: CaseResult) -> None:
    element = _sub(suite, "testcase", name=case.case, classname=case.host, time=_seconds(case.seconds))
    outcome = _ELEMENT_FOR_VERDICT.get(case.verdict)
    if outcome:
        headline = case.reasons[0] if case.reasons else case.verdict
        headline = f"{case.blame}: {headline}" if case.blame else headline
        detail = _sub(element, outcome, message=headline, type=_TYPE_FOR_VERDICT[case.verdict])
        detail.text = printable(_reasons_and_evidence(case))
    elif case.verdict != PASS:      # an unknown verdict must not pass silently in CI
        _sub(element, "error", message=f"unknown verdict {case.verdict!r}", type="InfraError")
    out = _case_facts(case)
    if case.left_armed:
        out = "LEFT ARMED: the host still carries this case's sysctls; run `orchestrator disarm`\n" + out
    if case.verdict == PASS:        # no failure body to carry the evidence, so keep it here
        out = _reasons_and_evidence(case) + "\n" + out
    ET.SubElement(element, "system-out").text = printable(out)


def _reasons_and_evidence(case: CaseResult) -> str:
    lines = [f"reason: {reason}" for reason in case.reasons]
    for ev in case.evidence:
        when = f" +{ev.t:.3f}s" if ev.t is not None else ""
        lines.append(f"evidence [{ev.source}{when}] {ev.text}")
    return "\n".join(lines)


def _case_facts(case: CaseResult) -> str:
    pfn = f"{case.pfn:#x}" if case.pfn is not None else None
    facts = [("started_at", case.started_at), ("expect", case.expect), ("pfn", pfn),
             ("page_class", case.page_class), ("injector", case.injector),
             ("panic_after_inject_s", case.panic_after_inject_s),
             ("boot_id_before", case.boot_id_before), ("boot_id_after", case.boot_id_after),
             ("recovery", ", ".join(case.recovery)), ("dump", case.dump)]
    lines = [f"{name}: {value}" for name, value in facts if value not in (None, "", {})]
    lines += [f"phase {p.state}: start +{p.started:.3f}s, {p.seconds:.3f}s (waited {p.waited:.3f}s)"
              + (f" {p.note}" if p.note else "") for p in case.timings]
    lines += [f"artifact {name}: {path}" for name, path in sorted(case.artifacts.items())]
    return "\n".join(lines)


def _sub(parent: ET.Element, tag: str, **attributes: object) -> ET.Element:
    return ET.SubElement(parent, tag, {key: printable(value) for key, value in attributes.items()})


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _schema_timestamp(iso: str) -> str | None:
    """The JUnit schema wants ``YYYY-MM-DDTHH:MM:SS`` with no zone; we store UTC."""
    try:
        moment = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")
