"""The real case executor the engine's jobs call (jobs.CASE_EXECUTOR names it): one queued
(host, case) of a run, through the same code as a local run's host thread."""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.fleet.host_run import HostRun
from orchestrator.fleet.lease_keeper import case_budget
from orchestrator.fleet.run_folder import RunFolder


def run_case_in_folder(run_dir: str, host: str, case: str) -> None:
    """Run ``case`` on ``host`` into the run's folder (its request names the inventory and
    playbook). A retried job of a dead worker waits for that worker's lease to expire: at
    most the case's deadline budget it was taken for."""
    folder = RunFolder.open(Path(run_dir), shared=True)     # other workers write here too
    plan = folder.plan
    try:
        target = plan.inventory.host(host)
        the_case = next(c for c in plan.playbook.cases if c.name == case)
    except (KeyError, StopIteration):
        raise ConfigError(f"the run's request has no host {host!r} with case {case!r}",
                          path=str(Path(run_dir) / "run-request.json")) from None
    if (host, case) in folder.finished():
        return                      # already verdicted (a job retried after its result was written)
    HostRun(folder, target, lease_wait_s=max(plan.lease_wait_s, case_budget(the_case))).run([the_case])
    folder.reload()
    folder.assemble()
