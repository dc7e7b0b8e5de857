"""The engine's one job kind: run one case of one host, writing into the run's folder.

Per job, procrastinate is told:
  * ``lock="host:<name>"``: no two jobs of one host ever run at once, on any worker; a
    retried job keeps its lock and its place before the host's later cases;
  * ``queueing_lock="<run_id>/<host>/<case>"``: the same case of the same run cannot be
    queued twice;
  * ``queue="lab.<name>"``: only the workers of that lab site take it.

The case itself runs through ONE seam, :data:`CASE_EXECUTOR`: a ``"module:function"``
reference to ``execute(run_dir: str, host: str, case: str) -> None``, resolved at each job
(so a worker never needs restarting for it). ``$ORCH_CASE_EXECUTOR`` replaces it, for tests
and benchmarks that run workers with a fake executor.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import procrastinate

from orchestrator.errors import ConfigError

#: The case executor: ``execute(run_dir, host, case)`` runs one (host, case) cycle and writes
#: ``<run_dir>/<host>/<case>/result.json``. The fleet's wiring replaces the function it names.
CASE_EXECUTOR = "orchestrator.fleet.engine.execute:run_case_in_folder"
CASE_EXECUTOR_ENV = "ORCH_CASE_EXECUTOR"
#: Stable across versions: queued jobs name their task, and a rename would strand them.
TASK_NAME = "memfail.run_case"

CaseExecutor = Callable[[str, str, str], None]


@dataclass(frozen=True)
class CaseJob:
    """One (host, case) of one run, as queued."""

    run_id: str
    run_dir: str
    host: str
    case: str

    @property
    def host_lock(self) -> str:
        return f"host:{self.host}"

    @property
    def queueing_lock(self) -> str:
        return f"{self.run_id}/{self.host}/{self.case}"


def case_executor() -> CaseExecutor:
    """The function :data:`CASE_EXECUTOR` (or ``$ORCH_CASE_EXECUTOR``) names."""
    spec = os.environ.get(CASE_EXECUTOR_ENV) or CASE_EXECUTOR
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"case executor {spec!r} cannot be loaded: {exc}") from None
    if not callable(function):
        raise ConfigError(f"case executor {spec!r} is not a function")
    return function


def run_case(run_dir: str, host: str, case: str) -> None:
    """The task body: a blocking call, run by procrastinate in a worker thread so that the
    worker's heartbeat and its other hosts' jobs go on meanwhile."""
    case_executor()(run_dir, host, case)


def register(app: procrastinate.App) -> None:
    # no automatic retry: a case that raised has already injected, or found why it cannot;
    # running it again is a decision for a person. Only a dead worker's job is retried.
    app.task(name=TASK_NAME, pass_context=False)(run_case)


def defer_case(app: procrastinate.App, queue: str, job: CaseJob) -> int:
    """Queue one (host, case); procrastinate's AlreadyEnqueued if it is queued already."""
    deferrer = app.configure_task(TASK_NAME, queue=queue, lock=job.host_lock, queueing_lock=job.queueing_lock)
    return deferrer.defer(run_dir=job.run_dir, host=job.host, case=job.case)


async def defer_case_async(app: procrastinate.App, queue: str, job: CaseJob) -> int:
    deferrer = app.configure_task(TASK_NAME, queue=queue, lock=job.host_lock, queueing_lock=job.queueing_lock)
    return await deferrer.defer_async(run_dir=job.run_dir, host=job.host, case=job.case)
