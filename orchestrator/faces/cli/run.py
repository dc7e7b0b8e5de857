"""``orchestrator run PLAYBOOK [-i INVENTORY]``: a playbook on an inventory (default: the virtual lab)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from orchestrator import paths
from orchestrator.config.inventory import load_inventory
from orchestrator.config.model import Inventory
from orchestrator.config.playbook import load_playbook
from orchestrator.errors import ConfigError
from orchestrator.faces.cli.summary import print_summary
from orchestrator.faces.progress import Progress
from orchestrator.fleet.runner import RunRequest, Runner


def add_run_command(sub) -> None:
    run = sub.add_parser("run", help="run a playbook on an inventory (default: the virtual lab)")
    run.add_argument("playbook", help="playbook YAML, e.g. playbooks/nightly.yaml")
    run.add_argument("-i", "--inventory", help="inventory YAML (default: bring up and use the virtual lab)")
    run.add_argument("--hosts", help="comma-separated host names to run on (default: all)")
    run.add_argument("--cases", help="comma-separated case names to run (default: all)")
    run.add_argument("--results", default=str(paths.results_dir()), help="results folder (default: %(default)s)")
    run.set_defaults(func=cmd_run)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split(",") if v)


def cmd_run(args: argparse.Namespace) -> int:
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
        runner = Runner(request, on_state=progress.update)
        result = runner.run()
    print_summary(result, runner.run_dir)
    return result.exit_code()


def _virtual_lab_inventory(args: argparse.Namespace) -> Path:
    """With no -i, the run uses the virtual lab, bringing it up if it is down."""
    from orchestrator.vlab.lab import lifecycle as lab    # only a run without -i needs the lab

    lab.ensure_up()
    return paths.virtual_inventory()


def _select_hosts(inventory: Inventory, names: tuple[str, ...]) -> Inventory:
    if not names:
        return inventory
    known = {h.name for h in inventory.hosts}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"no such host(s) in the inventory: {', '.join(unknown)}", path=str(inventory.path))
    return replace(inventory, hosts=tuple(h for h in inventory.hosts if h.name in names))
