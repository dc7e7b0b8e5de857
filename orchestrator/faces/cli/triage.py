"""``orchestrator triage FILE|DIR...``: bucket the crashes found in console logs and kdump dmesg."""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator.errors import EXIT_OK
from orchestrator.triage.pipeline import triage_paths


def run_triage_command(args: argparse.Namespace) -> int:
    try:
        status = triage_paths(args.paths, jsonl=args.jsonl, out=sys.stdout)
        sys.stdout.flush()      # inside the try: a reader gone by now is the same quiet stop
    except BrokenPipeError:
        # The reader has all it wanted (``triage --json ... | head``): stop quietly. Python's
        # docs (signal module, "Note on SIGPIPE") point stdout at devnull so the interpreter's
        # own flush at exit does not raise a second BrokenPipeError.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    return status


def add_triage_command(subparsers) -> argparse.ArgumentParser:
    """Register ``triage``; the parsed namespace's ``func(args)`` returns the exit status."""
    parser = subparsers.add_parser(
        "triage", help="bucket kernel crashes found in console logs and kdump dmesg files",
        description="Bucket each crash (mf-fail-fast, mf-legacy, hw-error-consumed-later, firmware-fatal, "
                    "software) with a fingerprint that is stable across hosts and boots. Directories are "
                    "walked for dmesg*, vmcore-dmesg*, *.log and *.txt files (optionally .gz).")
    parser.add_argument("paths", nargs="+", metavar="FILE|DIR", help="log files or directories to read")
    parser.add_argument("--json", dest="jsonl", action="store_true", help="JSON lines, one object per crash")
    parser.set_defaults(func=run_triage_command)
    return parser
