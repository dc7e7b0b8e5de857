"""``orchestrator disarm`` and ``orchestrator lease list|break``: an operator's hands on the
fleet's shared hosts outside any run. Exit 0 when every host answered, 3 when any did not."""

from __future__ import annotations

import argparse
from dataclasses import replace

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator import paths
from orchestrator.config.inventory import load_inventory
from orchestrator.config.model import Inventory
from orchestrator.errors import EXIT_INFRA, EXIT_OK, ConfigError
from orchestrator.fleet import host_ops


def add_host_commands(sub) -> None:
    disarm = sub.add_parser("disarm", help="restore hosts from the arm journal they keep (sysctls, crash kernel)")
    _common(disarm)
    disarm.set_defaults(func=lambda args: _table(args, "disarm", host_ops.disarm_text))
    lease = sub.add_parser("lease", help="host leases: who holds which host").add_subparsers(
        dest="lease_command", required=True, metavar="ACTION")
    listing = lease.add_parser("list", help="each host's lease: holder, run, expiry")
    _common(listing)
    listing.set_defaults(func=lambda args: _table(args, "lease", host_ops.lease_text))
    breaking = lease.add_parser("break", help="remove a host's lease, whoever holds it")
    breaking.add_argument("host", metavar="HOST")
    _common(breaking, hosts=False)
    breaking.set_defaults(func=lambda args: _table(args, "lease break", host_ops.break_text))


def _common(parser: argparse.ArgumentParser, *, hosts: bool = True) -> None:
    parser.add_argument("-i", "--inventory", help="inventory YAML (default: the virtual lab's, %(default)s)",
                        default=None)
    if hosts:
        parser.add_argument("--hosts", help="comma-separated host names (default: all)")


def _inventory(args: argparse.Namespace) -> Inventory:
    inventory = load_inventory(args.inventory or paths.virtual_inventory())
    names = (args.host,) if getattr(args, "host", None) else tuple(n for n in (args.hosts or "").split(",") if n)
    unknown = [n for n in names if n not in {h.name for h in inventory.hosts}]
    if unknown:
        raise ConfigError(f"no such host(s) in the inventory: {', '.join(unknown)}", path=str(inventory.path))
    return replace(inventory, hosts=tuple(h for h in inventory.hosts if not names or h.name in names))


def _table(args: argparse.Namespace, title: str, action) -> int:
    inventory = _inventory(args)
    lines = host_ops.for_each_host(inventory.hosts, action)
    table = Table(title=f"{title}: {inventory.path}", title_justify="left")
    table.add_column("host", no_wrap=True)
    table.add_column("state", overflow="fold")
    for line in lines:
        table.add_row(Text(line.host), Text(line.text if line.ok else f"FAILED: {line.text}",
                                            style="" if line.ok else "bold magenta"))
    Console().print(table)
    return EXIT_OK if all(line.ok for line in lines) else EXIT_INFRA
