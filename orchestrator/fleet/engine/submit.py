"""Queue a run: check the inventory and playbook as a local run would, make the run folder
with its ``run-request.json``, and queue one job per (host, case) in the lab's queue.

The run folder is a local run's (results/store.py) on a filesystem every worker of the lab
also sees; workers write ``<host>/<case>/result.json`` into it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from procrastinate.exceptions import AlreadyEnqueued, ConnectorException

from orchestrator.errors import ConfigError, InfraError
from orchestrator.fleet.engine.app import build_app, describe_dsn, prepare_database, queue_for_lab
from orchestrator.fleet.engine.jobs import CaseJob, defer_case
from orchestrator.fleet.plan import RunPlan
from orchestrator.fleet.run_folder import RunFolder


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
    plan = RunPlan.load(sub.inventory_path, sub.playbook_path, hosts=sub.hosts, cases=sub.cases,
                        argv=sub.argv, lab=sub.lab)
    queue = queue_for_lab(sub.lab)
    prepare_database(sub.dsn)
    folder = RunFolder.create(sub.results_base, plan)
    run_dir = str(folder.run_dir.resolve())
    _queue_jobs(sub.dsn, queue, [CaseJob(folder.run_id, run_dir, host, case) for host, case in plan.pairs()])
    folder.assemble()
    return folder.run_dir


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
