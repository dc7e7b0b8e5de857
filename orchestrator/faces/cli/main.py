"""The ``orchestrator`` command. Exit status: 0 all pass, 1 any fail, 2 bad input,
3 infrastructure error. Bad input is one line naming file, line and field; never a traceback.

One module per command beside this one; this one assembles the parser and maps errors to
exit statuses (orchestrator/errors.py defines them)."""

from __future__ import annotations

import argparse
import sys

from orchestrator.errors import (EXIT_BAD_INPUT, EXIT_INFRA, EXIT_INTERRUPTED, ConfigError, InfraError,
                                 OrchestratorError)
from orchestrator.faces.cli.hosts import add_host_commands
from orchestrator.faces.cli.inventory import add_inventory_commands
from orchestrator.faces.cli.lab import add_lab_commands
from orchestrator.faces.cli.playbook import add_playbook_commands
from orchestrator.faces.cli.queue import add_queue_commands
from orchestrator.faces.cli.report import add_report_command
from orchestrator.faces.cli.run import add_run_command
from orchestrator.faces.cli.triage import add_triage_command


DESCRIPTION = ("Qualify vm.panic_on_unrecoverable_memory_failure on lab servers and on the virtual lab: "
               "inject memory errors, wait for the panic and the kdump, recover, verify. Exit status: "
               "0 all pass, 1 any kernel fail, 2 bad input, 3 infrastructure error.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_run_command, add_inventory_commands, add_playbook_commands, add_host_commands, add_report_command,
                add_triage_command, add_lab_commands, add_queue_commands):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"orchestrator: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InfraError as exc:
        print(f"orchestrator: infrastructure error: {exc}", file=sys.stderr)
        return EXIT_INFRA
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_INFRA
    except KeyboardInterrupt:
        print("orchestrator: interrupted; results written so far are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug must not read as "the kernel failed" (1)
        print(f"orchestrator: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INFRA


if __name__ == "__main__":
    sys.exit(main())
