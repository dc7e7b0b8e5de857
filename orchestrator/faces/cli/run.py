"""``orchestrator run PLAYBOOK [-i INVENTORY]``: a playbook on an inventory (default: the
virtual lab); ``orchestrator run --resume RUN_DIR`` carries on an interrupted run."""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orchestrator import paths
from orchestrator.errors import EXIT_INFRA, EXIT_INTERRUPTED, ConfigError
from orchestrator.faces.cli.summary import print_summary
from orchestrator.faces.progress import Progress
from orchestrator.fleet.plan import RunPlan
from orchestrator.fleet.runner import Runner
from orchestrator.results.store import ResultsWriteError


def add_run_command(sub) -> None:
    run = sub.add_parser("run", help="run a playbook on an inventory (default: the virtual lab)")
    run.add_argument("playbook", nargs="?", help="playbook YAML, e.g. playbooks/nightly.yaml")
    run.add_argument("-i", "--inventory", help="inventory YAML (default: bring up and use the virtual lab)")
    run.add_argument("--hosts", help="comma-separated host names to run on (default: all)")
    run.add_argument("--cases", help="comma-separated case names to run (default: all)")
    run.add_argument("--results", default=str(paths.results_dir()), help="results folder (default: %(default)s)")
    run.add_argument("--lease-wait", type=float, default=0.0, metavar="SECONDS",
                     help="wait up to this long for a host leased by another run (default: 0, an error at once)")
    run.add_argument("--resume", metavar="RUN_DIR", type=Path,
                     help="carry on an interrupted run in its folder: finished cases are kept, the rest run")
    run.set_defaults(func=cmd_run)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split(",") if v)


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.playbook or args.inventory or args.hosts or args.cases:
            raise ConfigError("--resume takes the run's own playbook, inventory and selection; give no others")
        runner_for = lambda **kw: Runner.resume(args.resume, **kw)      # noqa: E731 - one use below
    else:
        if not args.playbook:
            raise ConfigError("name a playbook (or --resume RUN_DIR)")
        if args.lease_wait < 0:
            raise ConfigError(f"--lease-wait must be 0 or more seconds, not {args.lease_wait}")
        inventory = Path(args.inventory) if args.inventory else _virtual_lab_inventory()
        plan = RunPlan.load(inventory, args.playbook, hosts=_split(args.hosts), cases=_split(args.cases),
                            argv=tuple(sys.argv[1:]), lease_wait_s=args.lease_wait)
        runner_for = lambda **kw: Runner.new(plan, Path(args.results), **kw)      # noqa: E731
    with _sigterm_as_interrupt():
        runner = runner_for()
        plan = runner.folder.plan
        try:
            with Progress([h.name for h in plan.inventory.hosts], len(plan.pairs())) as progress:
                runner.on_state = progress.update
                result = runner.run()
        except KeyboardInterrupt:
            print(f"orchestrator: interrupted; finished cases are kept in {runner.run_dir}\n"
                  f"carry on with: orchestrator run --resume {runner.run_dir}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except ResultsWriteError as exc:
            print(f"orchestrator: results folder refused a write, run stopped: {exc}; "
                  f"what was written before is kept in {runner.run_dir}", file=sys.stderr)
            return EXIT_INFRA
    print_summary(result, runner.run_dir)
    return result.exit_code()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A service manager's stop (SIGTERM) ends a run as Ctrl-C does: cases in flight finish and
    restore their host, nothing new starts, and ``--resume`` carries on later."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _virtual_lab_inventory() -> Path:
    """With no -i, the run uses the virtual lab, bringing it up if it is down."""
    from orchestrator.vlab.lab import lifecycle as lab    # only a run without -i needs the lab

    lab.ensure_up()
    return paths.virtual_inventory()
