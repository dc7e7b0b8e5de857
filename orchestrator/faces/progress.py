"""Progress per host and phase: a live table on a terminal, one line per transition elsewhere
(CI logs, cron mail), so a 2 a.m. reader sees where each host is and for how long."""

from __future__ import annotations

import sys
import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.faces.cli.summary import VERDICT_STYLE
from orchestrator.results.model import VERDICTS


class Progress:
    def __init__(self, hosts: list[str], total_cases: int, *, stream=None):
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream)
        self.live_mode = self.console.is_terminal
        self.total = total_cases
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._rows = {h: {"case": "-", "state": "waiting", "since": time.monotonic(), "done": 0, "tally": {}}
                      for h in hosts}
        self._live: Live | None = None

    def __enter__(self) -> "Progress":
        if self.live_mode:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)

    def update(self, host: str, case: str, state: str) -> None:
        with self._lock:
            row = self._rows.setdefault(host, {"case": "-", "state": "", "since": 0.0, "done": 0, "tally": {}})
            now = time.monotonic()
            if state.startswith("done:"):
                verdict = state.split(":", 1)[1]
                row["done"] += 1
                row["tally"][verdict] = row["tally"].get(verdict, 0) + 1
            elapsed = now - row["since"]
            row.update(case=case, state=state, since=now)
            if self._live is not None:
                self._live.update(self._table())
            else:
                # Plain text, never wrapped: a CI log or cron mail is read one line per event
                # (rich would fold at 80 columns on a non-terminal and split every line).
                self.stream.write(f"[{now - self._t0:7.1f}s] {host:<16} {case:<28} {state:<16} "
                                  f"(previous state {elapsed:5.1f}s)\n")
                self.stream.flush()

    def _table(self) -> Table:
        table = Table(title=f"memory-failure qualification ({time.monotonic() - self._t0:.0f}s)")
        for col in ("host", "case", "state", "in state", "done", "verdicts"):
            table.add_column(col)
        now = time.monotonic()
        for host, row in self._rows.items():
            tally = " ".join(f"[{VERDICT_STYLE.get(v, '')}]{v} {n}[/]" for v, n in _in_verdict_order(row["tally"]))
            table.add_row(host, row["case"], row["state"], f"{now - row['since']:.1f}s",
                          f"{row['done']}", tally)
        return table


def _in_verdict_order(tally: dict[str, int]) -> list[tuple[str, int]]:
    """The tally in the order the run summary counts verdicts; an unknown one last."""
    known = [(v, tally[v]) for v in VERDICTS if v in tally]
    return known + sorted((v, n) for v, n in tally.items() if v not in VERDICTS)
