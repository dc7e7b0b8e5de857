"""The ``orchestrator`` command. Exit status: 0 all pass, 1 any fail, 2 bad input,
3 infrastructure error. Bad input is one line naming file, line and field; never a traceback."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator import paths
from orchestrator.config.inventory import load_inventory
from orchestrator.config.model import Inventory
from orchestrator.config.playbook import load_playbook
from orchestrator.errors import (EXIT_BAD_INPUT, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK, ConfigError, InfraError,
                                 OrchestratorError)




def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split(",") if v)


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.faces.progress import Progress
    from orchestrator.fleet.runner import RunRequest, Runner
    from orchestrator.fleet.host_handles import build_handles

    playbook = load_playbook(args.playbook)
    if args.inventory is None:
        inventory_path = _virtual_lab_inventory(args)
    else:
        inventory_path = Path(args.inventory)
    inventory = _select_hosts(load_inventory(inventory_path), _split(args.hosts))
    if args.cases:
        playbook = playbook.select(_split(args.cases))
    for host in inventory.hosts:
        if host.bmc is not None:
            host.bmc.password.resolve()     # an unset variable is bad input, not a lab failure
    refused = [h.name for h in inventory.hosts if not h.destructive]
    if refused:
        raise ConfigError(f"host(s) {', '.join(refused)} lack 'destructive: true'; refusing to inject",
                          path=str(inventory.path))
    request = RunRequest(inventory=inventory, playbook=playbook, results_base=Path(args.results),
                         argv=tuple(sys.argv[1:]))
    with Progress([h.name for h in inventory.hosts], len(playbook.cases) * len(inventory.hosts)) as progress:
        runner = Runner(request, transports=build_handles, on_state=progress.update)
        result = runner.run()
    _print_summary(result, runner.run_dir)
    return result.exit_code()


def _virtual_lab_inventory(args: argparse.Namespace) -> Path:
    """With no -i, the run uses the virtual lab, bringing it up if it is down."""
    from orchestrator.vlab.lab import lifecycle as lab

    lab.ensure_up()
    return paths.virtual_inventory()


def _select_hosts(inventory: Inventory, names: tuple[str, ...]) -> Inventory:
    if not names:
        return inventory
    known = {h.name for h in inventory.hosts}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"no such host(s) in the inventory: {', '.join(unknown)}", path=str(inventory.path))
    from dataclasses import replace
    return replace(inventory, hosts=tuple(h for h in inventory.hosts if h.name in names))


def _print_summary(result, run_dir: Path) -> None:
    out = Console()
    table = Table(title=f"run {result.run_id}")
    for col in ("host", "case", "verdict", "pfn", "seconds", "first reason"):
        table.add_column(col)
    for c in result.cases:
        table.add_row(c.host, c.case, c.verdict, f"{c.pfn:#x}" if c.pfn is not None else "-",
                      f"{c.seconds:.1f}", (c.reasons[0] if c.reasons else "")[:100])
    out.print(table)
    out.print(f"report: {run_dir / 'report.html'}", highlight=False)
    out.print(f"run.json: {run_dir / 'run.json'}  junit: {run_dir / 'junit.xml'}", highlight=False)


def cmd_inventory_check(args: argparse.Namespace) -> int:
    from orchestrator.fleet.reachability import probe_host

    inventory = load_inventory(args.file)
    table = Table(title=f"{inventory.path} ({len(inventory.hosts)} hosts, sha256 {inventory.digest[:12]})")
    for col in ("host", "arch", "platform", "destructive", "features", "ssh", "bmc"):
        table.add_column(col)
    if args.no_probe:
        rows = [(h, "not probed", "not probed") for h in inventory.hosts]
    else:
        with ThreadPoolExecutor(max_workers=max(1, len(inventory.hosts))) as pool:
            rows = list(pool.map(probe_host, inventory.hosts))
    bad = False
    for host, ssh, bmc in rows:
        bad |= ssh.startswith("FAIL") or bmc.startswith("FAIL")
        table.add_row(host.name, host.arch, host.platform, "yes" if host.destructive else "no",
                      ",".join(sorted(host.features)), ssh, bmc)
    Console().print(table)
    return EXIT_INFRA if bad else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a playbook on an inventory (default: the virtual lab)")
    run.add_argument("playbook", help="playbook YAML, e.g. playbooks/nightly.yaml")
    run.add_argument("-i", "--inventory", help="inventory YAML (default: bring up and use the virtual lab)")
    run.add_argument("--hosts", help="comma-separated host names to run on (default: all)")
    run.add_argument("--cases", help="comma-separated case names to run (default: all)")
    run.add_argument("--results", default=str(paths.results_dir()), help="results folder (default: %(default)s)")
    run.set_defaults(func=cmd_run)

    inv = sub.add_parser("inventory", help="inventory tools").add_subparsers(dest="inv_command", required=True)
    check = inv.add_parser("check", help="validate an inventory and probe SSH and BMC reachability")
    check.add_argument("file")
    check.add_argument("--no-probe", action="store_true", help="validate only; do not contact the hosts")
    check.set_defaults(func=cmd_inventory_check)

    from orchestrator.results.store import add_report_command
    from orchestrator.triage.pipeline import add_triage_command
    from orchestrator.vlab.lab.lifecycle import add_lab_commands
    add_report_command(sub)
    add_triage_command(sub)
    add_lab_commands(sub)
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
