"""Queue a run: check the inventory and playbook as a local run would, make the run folder
with its ``run-request.json``, and queue one job per (host, case) in the lab's queue.

The run folder is a local run's (results/store.py) on a filesystem every worker of the lab
also sees; workers write ``<host>/<case>/result.json`` into it."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from procrastinate.exceptions import AlreadyEnqueued, ConnectorException

from orchestrator.config.inventory import load_inventory
from orchestrator.config.model import Inventory
from orchestrator.config.playbook import load_playbook
from orchestrator.errors import ConfigError, InfraError
from orchestrator.fleet.engine.app import build_app, describe_dsn, prepare_database, queue_for_lab
from orchestrator.fleet.engine.jobs import CaseJob, defer_case
from orchestrator.results import store

RUN_REQUEST_JSON = "run-request.json"


@dataclass(frozen=True)
class Submission:
    inventory_path: Path
    playbook_path: Path
    lab: str
    dsn: str
    results_base: Path
    hosts: tuple[str, ...] = ()       # empty: every host of the inventory
    cases: tuple[str, ...] = ()       # empty: every case of the playbook
    argv: tuple[str, ...] = ()


def submit_run(sub: Submission) -> Path:
    """Queue the run; returns its folder. Bad input is found before the database is asked,
    and the database before any folder is made."""
    inventory = select_hosts(load_inventory(sub.inventory_path), sub.hosts)
    playbook = load_playbook(sub.playbook_path)
    if sub.cases:
        playbook = playbook.select(sub.cases)
    refused = [h.name for h in inventory.hosts if not h.destructive]
    if refused:
        raise ConfigError(f"host(s) {', '.join(refused)} lack 'destructive: true'; refusing to inject",
                          path=str(inventory.path))
    queue = queue_for_lab(sub.lab)
    prepare_database(sub.dsn)
    run_id, run_dir = store.new_run_dir(sub.results_base)
    hosts, cases = [h.name for h in inventory.hosts], [c.name for c in playbook.cases]
    request = {"run_id": run_id, "inventory": str(Path(inventory.path).resolve()),
               "playbook": str(Path(playbook.path).resolve()), "hosts": hosts, "cases": cases,
               "lab": sub.lab, "queue": queue, "argv": list(sub.argv)}
    store.write_atomic(run_dir / RUN_REQUEST_JSON, json.dumps(request, indent=2) + "\n")
    jobs = [CaseJob(run_id, str(run_dir.resolve()), host, case) for host in hosts for case in cases]
    _queue_jobs(sub.dsn, queue, jobs)
    return run_dir


def _queue_jobs(dsn: str, queue: str, jobs: list[CaseJob]) -> None:
    """In host order, then case order: procrastinate runs a host's jobs by id, so the
    playbook's order per host is kept."""
    app = build_app(dsn)
    try:
        with app.open():
            for job in jobs:
                defer_case(app, queue, job)
    except AlreadyEnqueued as exc:
        raise ConfigError(f"already queued: {exc}") from None
    except ConnectorException as exc:
        raise InfraError(f"queue database {describe_dsn(dsn)}: {str(exc).strip().splitlines()[0]}") from None


def select_hosts(inventory: Inventory, names: tuple[str, ...]) -> Inventory:
    if not names:
        return inventory
    known = {h.name for h in inventory.hosts}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"no such host(s) in the inventory: {', '.join(unknown)}", path=str(inventory.path))
    return replace(inventory, hosts=tuple(h for h in inventory.hosts if h.name in names))
