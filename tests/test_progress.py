"""What a user sees of a run's progress when it is not on a terminal (CI log, cron mail)."""

from __future__ import annotations

import io

from orchestrator.faces.progress import Progress


def test_a_non_terminal_gets_one_plain_line_per_state():
    out = io.StringIO()
    long_case = "a-case-name-long-enough-to-push-a-line-past-eighty-columns"
    with Progress(["vlab-x86-1"], 1, stream=out) as progress:
        for state in ("preflight", "armed", "injected", "done:pass"):
            progress.update("vlab-x86-1", long_case, state)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert all(long_case in line and "(previous state" in line for line in lines)
    assert "\x1b[" not in out.getvalue()          # no colour codes in a log file
