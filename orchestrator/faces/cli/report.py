"""``orchestrator report RUN_DIR``: re-render a run's junit.xml and report.html from its run.json."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.errors import EXIT_BAD_INPUT, EXIT_OK, ConfigError
from orchestrator.faces.cli.summary import print_summary
from orchestrator.results.store import load_run, render_reports


def add_report_command(subparsers) -> None:
    """Register ``report RUN_DIR``; the handler is ``args.func(args) -> exit status``."""
    parser = subparsers.add_parser(
        "report", help="re-render junit.xml and report.html from a run's run.json",
        description="Re-render junit.xml and report.html of RUN_DIR from its run.json and "
                    "print a summary. run.json itself is never modified.")
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="results/<run_id> folder")
    parser.set_defaults(func=report_command)


def report_command(args) -> int:
    """Exit EXIT_OK, or EXIT_BAD_INPUT with one line on stderr: no readable run.json, or a
    folder the reports cannot be written to (the run's record is the input either way)."""
    try:
        run = load_run(args.run_dir)
        render_reports(args.run_dir, run)
    except ConfigError as exc:
        return _error(str(exc))
    except OSError as exc:          # e.g. a read-only results folder
        return _error(f"{args.run_dir}: cannot write the reports: {exc}")
    print_summary(run, args.run_dir)
    return EXIT_OK


def _error(message: str) -> int:
    # Prefixed like every other command's errors, so a log or cron mail names the command.
    print(f"orchestrator report: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
