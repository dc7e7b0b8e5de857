"""report.html: one static page a person reads after a run, offline, with no scripts.

Top to bottom: what the run was, counts by verdict, a host x case grid (each cell links to
its case), the facts of every host, then one section per case: timeline of the cycle's
phases, reasons, evidence lines, dump metadata and links to the case's artifacts.

Every string from the run passes through ``_e`` (control characters made visible, then
HTML-escaped): host names, case names and console lines are all attacker-shaped input.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from urllib.parse import quote

from .junit import hosts_in_order, printable
from .model import ERROR, FAIL, PASS, SKIP, VERDICTS, CaseResult, HostFacts, PhaseTiming, RunResult

#: Worst first: a grid cell holding several results of one host x case shows the worst.
_SEVERITY = (FAIL, ERROR, SKIP, PASS)

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;padding:1em 2em;max-width:1500px;color:#222}
h1{font-size:1.5em;margin:.2em 0} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
h3{margin:.2em 0;font-size:1.1em} code,.mono{font-family:ui-monospace,monospace;font-size:.92em}
table{border-collapse:collapse;margin:.4em 0} th,td{border:1px solid #d5d5d5;padding:.25em .5em;
 text-align:left;vertical-align:top} th{background:#f4f4f4}
.meta th{background:none;border:none;color:#666;font-weight:normal;padding-left:0}
.meta td{border:none;overflow-wrap:anywhere}
.v-pass{background:#e3f4e4;color:#1b5e20} .v-fail{background:#fde4e4;color:#b71c1c}
.v-error{background:#fff0d9;color:#a34b00} .v-skip{background:#eee;color:#555}
.v-none{background:repeating-linear-gradient(45deg,#fafafa,#fafafa 4px,#eee 4px,#eee 8px)}
.badge{display:inline-block;padding:.05em .6em;border-radius:1em;font-weight:600;border:1px solid currentColor}
.chips span{margin-right:.6em;font-size:1.1em} .overall{font-size:1.2em;font-weight:600}
.grid td.cell{text-align:center;min-width:6em} .grid td.cell a{color:inherit;font-weight:600}
.grid th.case{max-width:14em;overflow-wrap:anywhere}
section.case{border:1px solid #ddd;border-left:6px solid #999;border-radius:4px;padding:.6em 1em;margin:1em 0}
section.case-pass{border-left-color:#43a047} section.case-fail{border-left-color:#e53935}
section.case-error{border-left-color:#fb8c00} section.case-skip{border-left-color:#9e9e9e}
section.case > h3 .badge{margin-right:.5em} .headline{font-weight:600;margin:.3em 0}
.tl{margin:.5em 0} .tl-row{display:grid;grid-template-columns:10em 1fr 16em;gap:.6em;align-items:center}
.tl-track{position:relative;height:1.1em;background:#f3f3f3;border-radius:2px}
.tl-bar{position:absolute;top:0;bottom:0;background:#7aa7d8;border-radius:2px;min-width:2px}
.tl-wait{position:absolute;top:0;bottom:0;left:0;background:#2f6fb3;border-radius:2px}
.tl-num{font-size:.85em;color:#555} .tl-axis{font-size:.8em;color:#777;display:flex;justify-content:space-between}
.evidence td.text{white-space:pre-wrap;overflow-wrap:anywhere;font-family:ui-monospace,monospace;font-size:.88em}
.evidence td.t{white-space:nowrap;text-align:right} .evidence td.src{white-space:nowrap}
.hosts td.kernel,.hosts code{white-space:nowrap} .hosts td.host{max-width:22em;overflow-wrap:anywhere}
a.up{font-size:.8em;font-weight:normal;margin-left:1em;color:#777}
.warn{color:#b71c1c;font-weight:600} .dim{color:#777} ul{margin:.3em 0}
"""


def report_html(run: RunResult) -> str:
    order = {host: i for i, host in enumerate(hosts_in_order(run))}
    # Sections grouped by host (inventory order), run order within a host; ids stay
    # the index in run.cases so grid links are stable whatever the grouping.
    indexed = sorted(enumerate(run.cases), key=lambda item: order[item[1].host])
    body = [_header(run), _grid(run), _hosts_table(run), "<h2>Cases</h2>",
            *(_case_section(i, case) for i, case in indexed)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>memfail run {_e(run.run_id)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _e(value: object) -> str:
    return escape(printable(value), quote=True)


def _badge(verdict: str) -> str:
    return f'<span class="badge {_verdict_class(verdict)}">{_e(verdict)}</span>'


def _verdict_class(verdict: str) -> str:
    return f"v-{verdict}" if verdict in VERDICTS else "v-error"


def _meta_table(rows: list[tuple[str, str]]) -> str:
    """Label/value rows; values are already HTML. Empty values are left out."""
    cells = "".join(f"<tr><th>{_e(label)}</th><td>{value}</td></tr>" for label, value in rows if value)
    return f'<table class="meta">{cells}</table>' if cells else ""


def _header(run: RunResult) -> str:
    counts = {v: sum(c.verdict == v for c in run.cases) for v in VERDICTS}
    verdict, words = _overall(run.exit_code(), counts)
    chips = "".join(f'<span class="badge {_verdict_class(v)}">{counts[v]} {v}</span>' for v in VERDICTS)
    controller = ", ".join(f"{k}={v}" for k, v in sorted(run.controller.items()))
    rows = [("started", _e(run.started_at)), ("finished", _e(run.finished_at)),
            ("duration", _e(_duration(run.started_at, run.finished_at))),
            ("inventory", f"<code>{_e(run.inventory_path)}</code> <span class=dim>{_e(run.inventory_digest)}</span>"),
            ("playbook", f"<code>{_e(run.playbook_path)}</code> <span class=dim>{_e(run.playbook_digest)}</span>"),
            ("controller", _e(controller)), ("schema", _e(run.schema_version))]
    return (f"<h1>memfail run <code>{_e(run.run_id)}</code></h1>\n"
            f'<p class="overall">{_badge(verdict)} {_e(words)}</p>\n'
            f'<p class="chips">{chips}</p>\n{_meta_table(rows)}')


def _overall(exit_code: int, counts: dict[str, int]) -> tuple[str, str]:
    """The one-line answer, worded from the same exit code the CLI returns."""
    if exit_code == 1:
        return FAIL, f"the kernel misbehaved in {counts[FAIL]} case(s)"
    if exit_code == 3:
        return ERROR, f"the lab failed in {counts[ERROR]} case(s); no kernel failure seen"
    if not counts[PASS]:        # exit 0 with nothing passed: do not call that a success
        return SKIP, "no case ran to a verdict"
    skipped = f", {counts[SKIP]} skipped" if counts[SKIP] else ""
    return PASS, f"{counts[PASS]} case(s) passed{skipped}"


def _grid(run: RunResult) -> str:
    cases = list(dict.fromkeys(c.case for c in run.cases))
    head = "".join(f'<th class="case">{_e(name)}</th>' for name in cases)
    rows = []
    for host in hosts_in_order(run):
        cells = []
        for name in cases:
            found = [(i, c) for i, c in enumerate(run.cases) if c.host == host and c.case == name]
            cells.append(_grid_cell(host, name, found))
        rows.append(f"<tr><th>{_e(host)}</th>{''.join(cells)}</tr>")
    return (f'<h2 id="grid">Grid</h2>\n<table class="grid"><tr><th>host \\ case</th>{head}</tr>\n'
            + "\n".join(rows) + "</table>")


def _grid_cell(host: str, name: str, found: list[tuple[int, CaseResult]]) -> str:
    where = f'data-host="{_e(host)}" data-case="{_e(name)}"'
    if not found:
        return f'<td class="cell v-none" {where} title="not run"></td>'
    worst = min((c.verdict for _, c in found), key=lambda v: _SEVERITY.index(v) if v in _SEVERITY else 0)
    links = " ".join(f'<a href="#case-{i}" title="{_e(c.reasons[0] if c.reasons else c.verdict)}">'
                     f"{_e(c.verdict)}</a> <span class=dim>{c.seconds:.0f}s</span>" for i, c in found)
    return f'<td class="cell {_verdict_class(worst)}" {where}>{links}</td>'


def _hosts_table(run: RunResult) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("host", "arch / platform", "kernel", "boot id",
                                              "semantics", "sysctls", "features"))
    return (f'<h2>Hosts</h2>\n<table class="hosts"><tr>{head}</tr>'
            + "".join(_host_row(facts) for facts in run.hosts) + "</table>")


def _host_row(facts: HostFacts) -> str:
    semantics = _e(facts.semantics or "unknown") + _list(facts.semantics_evidence, "dim mono")
    sysctls = "<br>".join(f"<code>{_e(k)} = {_e(v)}</code>" for k, v in sorted(facts.sysctls.items()))
    error = f'<div class="warn">preflight: {_e(facts.error)}</div>' if facts.error else ""
    cells = (f"{_e(facts.host)}{error}", f"{_e(facts.arch)} / {_e(facts.platform)}",
             f"<code>{_e(facts.kernel_release or '?')}</code>", f"<code>{_e(facts.boot_id or '')}</code>",
             semantics, sysctls, _e(", ".join(facts.features)))
    css = ("host", "", "kernel", "", "", "", "")
    return "<tr>" + "".join(f'<td class="{c}">{cell}</td>' for c, cell in zip(css, cells)) + "</tr>"


def _list(items, css: str = "") -> str:
    return f'<ul class="{css}">' + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>" if items else ""


def _case_section(index: int, case: CaseResult) -> str:
    # "case-<verdict>", not "v-<verdict>": the section gets a coloured edge, not coloured text
    verdict = "case-" + _verdict_class(case.verdict)[2:]
    headline = f'<p class="headline">{_e(case.reasons[0])}</p>' if case.reasons else ""
    parts = [f'<section class="case {verdict}" id="case-{index}">',
             f"<h3>{_badge(case.verdict)}<code>{_e(case.host)}</code> / <code>{_e(case.case)}</code>"
             ' <a class="up" href="#grid" title="back to the grid">&uarr; grid</a></h3>',
             headline, _case_meta(case), _timeline(case.timings, case.seconds)]
    if len(case.reasons) > 1:
        parts.append("<h4>Reasons</h4>" + _list(case.reasons))
    parts += [_evidence(case), _dump(case.dump), _artifacts(case.artifacts), "</section>"]
    return "\n".join(part for part in parts if part)


def _case_meta(case: CaseResult) -> str:
    boot = ""
    if case.boot_id_before or case.boot_id_after:
        before, after = case.boot_id_before or "?", case.boot_id_after or "?"
        changed = "" if "?" in (before, after) else " (rebooted)" if before != after else " (same boot)"
        boot = f"<code>{_e(before)}</code> &rarr; <code>{_e(after)}</code>{changed}"
    panic = f"{case.panic_after_inject_s:.3f} s" if case.panic_after_inject_s is not None else ""
    recovery = f'<span class="warn">{_e(", ".join(case.recovery))}</span>' if case.recovery else ""
    return _meta_table([
        ("started", _e(case.started_at)), ("duration", f"{case.seconds:.1f} s"),
        ("expect", f"<code>{_e(json.dumps(case.expect, sort_keys=True, default=str))}</code>" if case.expect else ""),
        ("target", _e(" ".join(filter(None, (f"pfn {case.pfn:#x}" if case.pfn is not None else "",
                                            case.page_class, f"via {case.injector}" if case.injector else ""))))),
        ("panic after injection", panic), ("boot id", boot), ("BMC recovery", recovery)])


def _timeline(timings: tuple[PhaseTiming, ...], case_seconds: float) -> str:
    """One row per phase on a common time axis (a Gantt chart): labels stay readable even
    when a phase is a sliver next to a two-minute reboot. Dark = waiting on the host."""
    if not timings:
        return ""
    total = max([case_seconds] + [p.started + p.seconds for p in timings]) or 1.0
    rows = []
    for p in timings:
        left, width = (max(0.0, 100 * x / total) for x in (p.started, p.seconds))
        wait = min(100.0, 100 * p.waited / p.seconds) if p.seconds > 0 else 0.0
        title = _e(f"{p.state}: +{p.started:.1f}s for {p.seconds:.1f}s" + (f" - {p.note}" if p.note else ""))
        bar = (f'<div class="tl-track"><div class="tl-bar" style="left:{left:.2f}%;width:{width:.2f}%" '
               f'title="{title}"><div class="tl-wait" style="width:{wait:.1f}%"></div></div></div>')
        note = f" {_e(p.note)}" if p.note else ""
        rows.append(_timeline_row(f"<span class=mono>{_e(p.state)}</span>", bar,
                                  f"{p.seconds:.1f} s (waited {p.waited:.1f}){note}"))
    axis = f'<div class="tl-axis"><span>0 s</span><span>{total:.1f} s</span></div>'
    rows.append(_timeline_row("<span></span>", axis, "dark: waiting on the host"))
    return '<h4>Timeline</h4><div class="tl">' + "".join(rows) + "</div>"


def _timeline_row(label: str, track: str, numbers: str) -> str:
    return f'<div class="tl-row">{label}{track}<span class="tl-num">{numbers}</span></div>'


def _evidence(case: CaseResult) -> str:
    if not case.evidence:
        return ""
    rows = "".join(f'<tr><td class="src">{_e(ev.source)}</td><td class="t">{_since(ev.t)}</td>'
                   f'<td class="text">{_e(ev.text)}</td></tr>' for ev in case.evidence)
    return ('<h4>Evidence</h4><table class="evidence"><tr><th>source</th><th>since injection</th>'
            f"<th>line</th></tr>{rows}</table>")


def _since(t: float | None) -> str:
    return f"+{t:.3f} s" if t is not None else "&mdash;"


def _dump(dump: dict | None) -> str:
    """Known keys get a readable form; anything else the cycle adds is still shown."""
    if not dump:
        return ""
    rest = dict(dump)
    info = rest.pop("vmcoreinfo", None) or {}
    files = rest.pop("files", None) or {}
    rows = []
    if rest.pop("incomplete", False):
        rows.append(("status", '<span class="warn">INCOMPLETE dump</span>'))
    for key in ("OSRELEASE", "PAGESIZE", "CRASHTIME"):
        if key in info:
            rows.append((key, _e(info[key]) + _crashtime(info[key] if key == "CRASHTIME" else None)))
    if isinstance(files, dict):
        files = [f"{name}  {_size(size)}" for name, size in sorted(files.items())]
    rows.append(("files", "<br>".join(f"<code>{_e(f)}</code>" for f in files)))
    shown = {"OSRELEASE", "PAGESIZE", "CRASHTIME"}
    if set(info) - shown:
        rows.append(("VMCOREINFO", f"<span class=dim>{len(set(info) - shown)} more keys in run.json</span>"))
    rows += [(key, _plain(value)) for key, value in sorted(rest.items())]
    return "<h4>Dump</h4>" + _meta_table(rows)


def _plain(value: object) -> str:
    """Strings as they are, lists one item a line (dump notes), anything else as JSON."""
    if isinstance(value, str):
        return _e(value)
    if isinstance(value, list):
        return "<br>".join(_plain(item) for item in value)
    return _e(json.dumps(value, sort_keys=True, default=str))


def _crashtime(value: object) -> str:
    try:
        return f" <span class=dim>({datetime.fromtimestamp(int(value), timezone.utc):%Y-%m-%d %H:%M:%S} UTC)</span>"
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _size(size: object) -> str:
    if not isinstance(size, (int, float)):
        return str(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def _artifacts(artifacts: dict) -> str:
    # quote() turns "javascript:..." into a harmless relative path; links are relative
    # to the run directory, where report.html lives.
    links = " &middot; ".join(f'<a href="{_e(quote(str(path), safe="/._-~"))}">{_e(name)}</a>'
                              for name, path in sorted(artifacts.items()))
    return f"<h4>Artifacts</h4><p>{links}</p>" if links else ""


def _duration(start: str, end: str) -> str:
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return ""
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"
