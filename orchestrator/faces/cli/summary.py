"""The run summary a command prints when it ends (``run`` and ``report`` alike), and the
colours of the verdicts wherever a face shows them."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text           # Text, not markup: names may contain "[...]"

from orchestrator.results.model import ERROR, FAIL, PASS, SKIP, RunResult

VERDICT_STYLE = {PASS: "green", FAIL: "bold red", ERROR: "bold magenta", SKIP: "dim"}


def _table(run: RunResult) -> Table:
    table = Table(title=f"run {run.run_id}", title_justify="left")
    for column in ("host", "case", "verdict", "pfn", "seconds", "why"):
        # fold, never ellipsis: a truncated case name cannot be copied into a re-run
        table.add_column(column, justify="right" if column == "seconds" else "left", overflow="fold")
    for case in run.cases:
        why = case.reasons[0] if case.reasons and case.verdict != PASS else ""
        table.add_row(Text(case.host), Text(case.case), Text(case.verdict, style=VERDICT_STYLE.get(case.verdict, "")),
                      f"{case.pfn:#x}" if case.pfn is not None else "-", f"{case.seconds:.1f}", Text(why))
    return table


def print_summary(run: RunResult, run_dir: Path, console: Console | None = None) -> None:
    """The verdict table, the counts, and where the reports are."""
    console = console or Console()
    console.print(_table(run))
    counts = ", ".join(f"{n} {v}" for v, n in run.verdict_counts().items())
    console.print(f"{len(run.cases)} cases: {counts}", markup=False)
    if run.left_armed():
        console.print(f"LEFT ARMED: {', '.join(run.left_armed())}: these hosts still carry a case's sysctls; "
                      "run `orchestrator disarm`", markup=False, style="bold red")
    console.print(f"report: {run_dir / 'report.html'}", markup=False, soft_wrap=True)
    console.print(f"run.json: {run_dir / 'run.json'}  junit: {run_dir / 'junit.xml'}", markup=False, soft_wrap=True)
