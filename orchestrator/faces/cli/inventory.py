"""``orchestrator inventory check INVENTORY``: validate an inventory and probe its hosts' SSH and BMC."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.config.inventory import load_inventory
from orchestrator.errors import EXIT_INFRA, EXIT_OK
from orchestrator.fleet.reachability import probe_host


def add_inventory_commands(sub) -> None:
    inv = sub.add_parser("inventory", help="inventory tools").add_subparsers(dest="inv_command", required=True)
    check = inv.add_parser("check", help="validate an inventory and probe SSH and BMC reachability")
    check.add_argument("file")
    check.add_argument("--no-probe", action="store_true", help="validate only; do not contact the hosts")
    check.set_defaults(func=cmd_inventory_check)


def cmd_inventory_check(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.file)
    # Text, not markup, wherever the user's words are shown: a platform "[/]" is not a style.
    table = Table(title=Text(f"{inventory.path} ({len(inventory.hosts)} hosts, sha256 {inventory.digest[:12]})"))
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
        table.add_row(*map(Text, (host.name, host.arch, host.platform, "yes" if host.destructive else "no",
                                  ",".join(sorted(host.features)), ssh, bmc)))
    console = Console()
    console.print(table)
    armed = [h.name for h in inventory.hosts if h.destructive]
    spared = [h.name for h in inventory.hosts if not h.destructive]
    # Said in words, not only as a column: this is the list a run will inject memory errors into.
    console.print(f"will inject into: {', '.join(armed) or 'no host'}", markup=False, soft_wrap=True)
    if spared:
        console.print(f"never injected (no 'destructive: true'): {', '.join(spared)}", markup=False, soft_wrap=True)
    return EXIT_INFRA if bad else EXIT_OK
