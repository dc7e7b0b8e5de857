"""A worker of one lab site: runs that lab's queued (host, case) jobs, up to ``concurrency``
hosts at once (procrastinate's host lock keeps each host to one job), and retries the
jobs of dead workers (stalled.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from procrastinate.exceptions import ConnectorException

from orchestrator.errors import ConfigError, InfraError
from orchestrator.fleet.engine.app import build_app, describe_dsn, prepare_database, queue_for_lab
from orchestrator.fleet.engine.stalled import StalledPolicy, watch_stalled_jobs
from orchestrator.tunables import ENGINE_HEARTBEAT_S, ENGINE_POLL_S

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    lab: str
    dsn: str
    concurrency: int = 1
    heartbeat_s: float = ENGINE_HEARTBEAT_S
    poll_s: float = ENGINE_POLL_S
    stalled: StalledPolicy = field(default_factory=StalledPolicy)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("must be at least 1", field="--concurrency")
        if self.stalled.stalled_after_s <= 2 * self.heartbeat_s:
            raise ConfigError("must exceed two heartbeats, or live workers are taken for dead",
                              field="--stalled-after")


def run_worker(settings: WorkerSettings) -> None:
    """Run until SIGINT/SIGTERM; then no new job starts and the cases in flight finish (a
    host mid-panic is left rebooted, not half-armed)."""
    queue = queue_for_lab(settings.lab)
    prepare_database(settings.dsn)
    try:
        asyncio.run(_serve(settings, queue))
    except ConnectorException as exc:
        raise InfraError(f"queue database {describe_dsn(settings.dsn)}: {str(exc).strip().splitlines()[0]}") from None


async def _serve(settings: WorkerSettings, queue: str) -> None:
    # each job is a blocking call in a thread of the loop's default pool: size it to the
    # concurrency (asyncio's default is only cpu count + 4)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=settings.concurrency + 2))
    # connections: one per job finishing at once, plus heartbeat, fetch and stalled checks
    app = build_app(settings.dsn, pool_size=settings.concurrency + 3)
    async with app.open_async():
        watcher = asyncio.create_task(watch_stalled_jobs(app, queue, settings.stalled), name="stalled jobs")
        try:
            await app.run_worker_async(
                queues=[queue], concurrency=settings.concurrency, name=worker_name(settings.lab),
                wait=True, listen_notify=True, fetch_job_polling_interval=settings.poll_s,
                update_heartbeat_interval=settings.heartbeat_s,
                stalled_worker_timeout=settings.stalled.stalled_after_s)
        finally:
            watcher.cancel()


def worker_name(lab: str) -> str:
    """Shown in procrastinate's tables and logs: which machine and process ran a job."""
    return f"{lab}@{socket.gethostname()}:{os.getpid()}"
