"""Jobs of dead workers. procrastinate 3 keeps a heartbeat per worker and can list the jobs
still marked "doing" by a worker whose heartbeat stopped (``JobManager.get_stalled_jobs``),
but leaves retrying them to the application: every worker does it here for its lab's queue.

A retried job keeps its host lock and its id, so it runs again before any later case of
its host and never beside one; it waits ``retry_delay_s`` first, for the dead worker's
host lease to expire."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import procrastinate
from procrastinate.exceptions import ConnectorException

from orchestrator.fleet.engine.jobs import TASK_NAME
from orchestrator.tunables import (ENGINE_MIN_RETRY_DELAY_S, ENGINE_RETRY_DELAY_S, ENGINE_STALLED_AFTER_S,
                                   ENGINE_STALLED_CHECK_S)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StalledPolicy:
    stalled_after_s: float = ENGINE_STALLED_AFTER_S
    check_every_s: float = ENGINE_STALLED_CHECK_S
    retry_delay_s: float = ENGINE_RETRY_DELAY_S


async def retry_stalled_jobs(app: procrastinate.App, queue: str, policy: StalledPolicy) -> list[int]:
    """Put the jobs of dead workers back in the queue; returns their ids."""
    stalled = await app.job_manager.get_stalled_jobs(queue=queue, task_name=TASK_NAME,
                                                     seconds_since_heartbeat=policy.stalled_after_s)
    delay = max(policy.retry_delay_s, ENGINE_MIN_RETRY_DELAY_S)
    retried = []
    for job in stalled:
        try:
            await app.job_manager.retry_job(job, retry_at=datetime.now(timezone.utc) + timedelta(seconds=delay))
        except ConnectorException:
            continue        # another worker of the lab retried it first: it is no longer "doing"
        log.warning("job %s (%s) of a dead worker will be retried in %.0f s", job.id, job.task_kwargs, delay)
        retried.append(job.id)
    return retried


async def watch_stalled_jobs(app: procrastinate.App, queue: str, policy: StalledPolicy) -> None:
    """Forever: look for dead workers' jobs. A database hiccup is logged, not fatal: the
    worker's own jobs go on, and the next look may succeed."""
    while True:
        await asyncio.sleep(policy.check_every_s)
        try:
            await retry_stalled_jobs(app, queue, policy)
        except ConnectorException as exc:
            log.warning("looking for jobs of dead workers failed: %s", exc)
