"""``orchestrator submit`` and ``orchestrator worker``: a run through the distributed engine
(orchestrator/fleet/engine/) instead of this controller's threads. ``submit`` queues the
run's (host, case) jobs in one lab site's queue and prints the run folder; ``worker`` runs
them, in the network that reaches that lab's BMCs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from orchestrator import paths
from orchestrator.fleet.engine.app import DSN_ENV, resolve_dsn
from orchestrator.fleet.engine.stalled import StalledPolicy
from orchestrator.fleet.engine.submit import Submission, submit_run
from orchestrator.fleet.engine.worker import WorkerSettings, run_worker
from orchestrator.tunables import (ENGINE_HEARTBEAT_S, ENGINE_RETRY_DELAY_S, ENGINE_STALLED_AFTER_S,
                                   ENGINE_STALLED_CHECK_S)

DB_HELP = f"queue database, a libpq DSN such as postgresql://user@db/memfail (default: ${DSN_ENV})"


def add_queue_commands(sub) -> None:
    submit = sub.add_parser("submit", help="queue a playbook's cases for the workers of a lab site")
    submit.add_argument("playbook", help="playbook YAML, e.g. playbooks/nightly.yaml")
    submit.add_argument("-i", "--inventory", help="inventory YAML (default: the virtual lab's; bring it up first)")
    submit.add_argument("--lab", required=True, help="lab site whose workers run the jobs (its queue)")
    submit.add_argument("--hosts", help="comma-separated host names to run on (default: all)")
    submit.add_argument("--cases", help="comma-separated case names to run (default: all)")
    submit.add_argument("--results", default=str(paths.results_dir()),
                        help="results folder, shared with the lab's workers (default: %(default)s)")
    submit.add_argument("--db", help=DB_HELP)
    submit.set_defaults(func=cmd_submit)

    worker = sub.add_parser("worker", help="run the queued cases of a lab site until stopped (Ctrl-C)")
    worker.add_argument("--lab", required=True, help="lab site whose queue to serve")
    worker.add_argument("--db", help=DB_HELP)
    worker.add_argument("--concurrency", type=int, default=1, help="hosts run at once (default: %(default)s)")
    worker.add_argument("--heartbeat", type=float, default=ENGINE_HEARTBEAT_S, metavar="S",
                        help="seconds between this worker's heartbeats (default: %(default)s)")
    worker.add_argument("--stalled-after", type=float, default=ENGINE_STALLED_AFTER_S, metavar="S",
                        help="a worker silent this long is dead; its job is retried (default: %(default)s)")
    worker.add_argument("--retry-delay", type=float, default=ENGINE_RETRY_DELAY_S, metavar="S",
                        help="a dead worker's job waits this long, for its host lease to expire "
                             "(default: %(default)s)")
    worker.set_defaults(func=cmd_worker)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split(",") if v)


def cmd_submit(args: argparse.Namespace) -> int:
    inventory = Path(args.inventory) if args.inventory else paths.virtual_inventory()
    submission = Submission(inventory_path=inventory, playbook_path=Path(args.playbook), lab=args.lab,
                            dsn=resolve_dsn(args.db), results_base=Path(args.results),
                            hosts=_split(args.hosts), cases=_split(args.cases), argv=tuple(sys.argv[1:]))
    print(submit_run(submission))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # look for dead workers a few times per "dead" period, so a dead job waits little longer than that
    policy = StalledPolicy(stalled_after_s=args.stalled_after,
                           check_every_s=min(args.stalled_after / 4, ENGINE_STALLED_CHECK_S),
                           retry_delay_s=args.retry_delay)
    run_worker(WorkerSettings(lab=args.lab, dsn=resolve_dsn(args.db), concurrency=args.concurrency,
                              heartbeat_s=args.heartbeat, stalled=policy))
    return 0
