"""``orchestrator playbook check PLAYBOOK``: validate a playbook and list its cases, touching no
host (the playbook's counterpart of ``orchestrator inventory check --no-probe``)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.config.playbook import Case, load_playbook
from orchestrator.errors import EXIT_OK


def add_playbook_commands(sub) -> None:
    book = sub.add_parser("playbook", help="playbook tools").add_subparsers(dest="pb_command", required=True)
    check = book.add_parser("check", help="validate a playbook and list its cases (no host is contacted)")
    check.add_argument("file")
    check.set_defaults(func=cmd_playbook_check)


def cmd_playbook_check(args: argparse.Namespace) -> int:
    playbook = load_playbook(args.file)
    # Text, not markup, wherever the user's words are shown: a name "[/]" or "[x86_64]" is not a style.
    table = Table(title=Text(f"{playbook.path}: {playbook.name} ({len(playbook.cases)} cases, "
                             f"sha256 {playbook.digest[:12]})"), title_justify="left")
    for col in ("case", "injector", "target"):
        table.add_column(col, no_wrap=True)
    for col in ("expectation", "limits"):
        table.add_column(col, overflow="fold")
    for case in playbook.cases:
        table.add_row(*(Text(cell) for cell in (case.name, case.injector, _target(case), _expectation(case),
                                                _limits(case))))
    Console().print(table)
    return EXIT_OK


def _target(case: Case) -> str:
    return f"pfn {case.pfn:#x}" if case.target == "pfn" else case.target


def _expectation(case: Case) -> str:
    expect = case.expect
    words = [expect.outcome]
    if expect.outcome != "survive" and expect.signature != "any":
        words.append(f"{expect.signature} signature")
    if expect.action_label or expect.action_result:
        words.append(f"{expect.action_label or 'any page'}: {expect.action_result or 'any result'}")
    words.append("dump" if expect.dump else "no dump")
    if case.kdump != "required":
        words.append(f"kdump {case.kdump}")
    return ", ".join(words)


def _limits(case: Case) -> str:
    lim = case.limits
    parts = [(label, values) for label, values in (("arch", lim.arches), ("platform", lim.platforms),
                                                   ("feature", lim.features), ("sysctl", lim.sysctls_present))
             if values]
    return "; ".join(f"{label} {', '.join(values)}" for label, values in parts) or "none"
