"""report.html: one static page a person reads after a run, offline, with no scripts.

Top to bottom: what the run was, counts by verdict, a host x case grid (each cell links to
its case), the facts of every host, then one section per case: timeline of the cycle's
phases, reasons, evidence lines, dump metadata and links to the case's artifacts.

The markup lives in Jinja2 templates (``templates/report.html.j2``, ``case.html.j2``,
``macros.html.j2``, ``report.css``); this module only turns a RunResult into the plain
values they show (counts, the grid, timeline geometry, dump rows).

Every value a template prints passes through ``_escaped`` (control characters made
visible, then HTML-escaped): host names, case names and console lines are all
attacker-shaped input. Autoescape stays on, so what the templates build (macros, set
blocks) is the only markup that reaches the page unescaped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timezone
from html import escape
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from ..errors import EXIT_FAIL, EXIT_INFRA, EXIT_NO_VERDICT
from .junit import hosts_in_order, printable
from .percase import PerCase
from .model import ERROR, FAIL, PASS, SKIP, VERDICTS, CaseResult, PhaseTiming, RunResult, worst


def new_sections() -> PerCase[Markup]:
    """Each case's report section, to keep from one report of a run to the next."""
    return PerCase(_section)


def report_html(run: RunResult, sections: PerCase[Markup] | None = None) -> str:
    counts = run.verdict_counts()
    verdict, words = _overall(run.exit_code(), counts)
    hosts = hosts_in_order(run)
    order = {host: i for i, host in enumerate(hosts)}
    anchored = list(zip(section_ids(run), run.cases))
    # Sections grouped by host (inventory order), run order within a host.
    grouped = sorted(anchored, key=lambda item: order[item[1].host])
    sections = sections or new_sections()
    return _ENV.get_template("report.html.j2").render(
        run=run, counts=counts, overall={"verdict": verdict, "words": words},
        duration=_duration(run.started_at, run.finished_at),
        controller=", ".join(f"{k}={v}" for k, v in sorted(run.controller.items())),
        grid=_grid(anchored, hosts), sections=[sections.of(case, anchor) for anchor, case in grouped])


def section_ids(run: RunResult) -> list[str]:
    """Each case's section id, from its host and case names: a case keeps its id, and so
    the section kept of it, from one report of a run to the next. (Its place in run.cases
    moves each time a case before it in the plan finishes: keyed by that place, nearly every
    section of a 1,000-host run was rendered again for every report.)"""
    seen: Counter[tuple[str, str]] = Counter()
    made = []
    for case in run.cases:
        seen[case.host, case.case] += 1
        made.append(section_id(case, seen[case.host, case.case]))
    return made


def section_id(case: CaseResult, repeat: int = 1) -> str:
    """The names encoded one to one ("~" never occurs in them); the n-th repeat of a host and
    case in one run gets "~n"."""
    made = f"case-{_id_safe(case.host)}~{_id_safe(case.case)}"
    return made if repeat == 1 else f"{made}~{repeat}"


def _id_safe(name: str) -> str:
    return _NOT_ID.sub(lambda m: f"_{ord(m.group()):x}_", name)


_NOT_ID = re.compile(r"[^A-Za-z0-9.-]")


def _section(case: CaseResult, anchor: str) -> Markup:
    return Markup(_ENV.get_template("case.html.j2").render(view=_case_view(anchor, case)))


def _escaped(value: object) -> Markup:
    """Every printed value: template-built markup as it is, anything else made printable and
    escaped. html.escape rather than markupsafe's escape keeps the entities report.html has
    always had (``&quot;``, ``&#x27;``), so the pages of old and new runs compare equal."""
    if isinstance(value, Markup):
        return value
    return Markup(escape(printable(value), quote=True))


def _verdict_class(verdict: str) -> str:
    return f"v-{verdict}" if verdict in VERDICTS else "v-error"


def _href(path: object) -> str:
    # quote() turns "javascript:..." into a harmless relative path; links are relative
    # to the run directory, where report.html lives.
    return quote(str(path), safe="/._-~")


def _as_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("orchestrator.results", "templates"), autoescape=True,
                      finalize=_escaped, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters.update(verdict_class=_verdict_class, href=_href, as_json=_as_json)
    return env


def _overall(exit_code: int, counts: dict[str, int]) -> tuple[str, str]:
    """The one-line answer, worded from the same exit code the CLI returns."""
    if exit_code == EXIT_FAIL:
        return FAIL, f"the kernel misbehaved in {counts[FAIL]} case(s)"
    if exit_code == EXIT_INFRA:
        return ERROR, f"the lab failed in {counts[ERROR]} case(s) or left a host armed; no kernel failure seen"
    if exit_code == EXIT_NO_VERDICT or not counts[PASS]:     # never call "nothing ran" a success
        return SKIP, "no case ran to a verdict"
    skipped = f", {counts[SKIP]} skipped" if counts[SKIP] else ""
    return PASS, f"{counts[PASS]} case(s) passed{skipped}"


def _grid(anchored: list[tuple[str, CaseResult]], hosts: list[str]) -> dict:
    """Case names (columns) and per host a cell per case: the results found there (with
    their section's id, the link target) and the worst verdict, which colours it."""
    cases = list(dict.fromkeys(c.case for _, c in anchored))
    where: dict[tuple[str, str], list] = {}
    for anchor, c in anchored:
        where.setdefault((c.host, c.case), []).append((anchor, c))
    rows = []
    for host in hosts:
        cells = []
        for name in cases:
            found = where.get((host, name), [])
            cells.append({"case": name, "found": found,
                          "worst": worst(c.verdict for _, c in found) if found else None})
        rows.append((host, cells))
    return {"cases": cases, "rows": rows}


def _case_view(anchor: str, case: CaseResult) -> dict:
    panic = case.panic_after_inject_s
    return {"anchor": anchor, "case": case, "target": _target(case), "boot": _boot(case),
            "panic_after": f"{panic:.3f} s" if panic is not None else "",
            "timeline": _timeline(case.timings, case.seconds), "dump": _dump(case.dump)}


def _target(case: CaseResult) -> str:
    pfn = f"pfn {case.pfn:#x}" if case.pfn is not None else ""
    return " ".join(filter(None, (pfn, case.page_class, f"via {case.injector}" if case.injector else "")))


def _boot(case: CaseResult) -> dict | None:
    if not (case.boot_id_before or case.boot_id_after):
        return None
    before, after = case.boot_id_before or "?", case.boot_id_after or "?"
    changed = "" if "?" in (before, after) else " (rebooted)" if before != after else " (same boot)"
    return {"before": before, "after": after, "changed": changed}


def _timeline(timings: tuple[PhaseTiming, ...], case_seconds: float) -> dict | None:
    """One row per phase on a common time axis (a Gantt chart): labels stay readable even
    when a phase is a sliver next to a two-minute reboot. Dark = waiting on the host."""
    if not timings:
        return None
    total = max([case_seconds] + [p.started + p.seconds for p in timings]) or 1.0
    phases = []
    for p in timings:
        left, width = (max(0.0, 100 * x / total) for x in (p.started, p.seconds))
        phases.append({"state": p.state, "left": left, "width": width, "seconds": p.seconds,
                       "waited": p.waited, "note": p.note,
                       "wait": min(100.0, 100 * p.waited / p.seconds) if p.seconds > 0 else 0.0,
                       "title": f"{p.state}: +{p.started:.1f}s for {p.seconds:.1f}s"
                                + (f" - {p.note}" if p.note else "")})
    return {"phases": phases, "total": total}


_SHOWN_VMCOREINFO = ("OSRELEASE", "PAGESIZE", "CRASHTIME")


def _dump(dump: dict | None) -> dict | None:
    """Known keys get a readable form; anything else the cycle adds is still shown."""
    if not dump:
        return None
    rest = dict(dump)
    info = rest.pop("vmcoreinfo", None) or {}
    files = rest.pop("files", None) or {}
    if isinstance(files, dict):
        files = [f"{name}  {_size(size)}" for name, size in sorted(files.items())]
    incomplete = bool(rest.pop("incomplete", False))
    known = [(key, info[key], _crashtime(info[key]) if key == "CRASHTIME" else "")
             for key in _SHOWN_VMCOREINFO if key in info]
    return {"incomplete": incomplete, "known": known, "files": files,
            "more_keys": len(set(info) - set(_SHOWN_VMCOREINFO)),
            "rest": [(key, _plain_lines(value)) for key, value in sorted(rest.items())]}


def _plain_lines(value: object) -> list[str]:
    """Strings as they are, lists one item a line (dump notes), anything else as JSON."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [line for item in value for line in _plain_lines(item)]
    return [_as_json(value)]


def _crashtime(value: object) -> str:
    try:
        return f"{datetime.fromtimestamp(int(value), timezone.utc):%Y-%m-%d %H:%M:%S}"
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _size(size: object) -> str:
    if not isinstance(size, (int, float)):
        return str(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def _duration(start: str, end: str) -> str:
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return ""
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


_ENV = _environment()
