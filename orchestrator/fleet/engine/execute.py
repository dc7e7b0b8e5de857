"""The real case executor the engine's jobs call (jobs.CASE_EXECUTOR names it).

To be wired to the fleet's single-case function: from ``<run_dir>/run-request.json`` load
the inventory and playbook, take the host's lease (fleet/lease.py; a lease still held by a
dead worker expires within LEASE_TTL_S, or within the deadline it was stretched over), run
the case's cycle, and write ``<run_dir>/<host>/<case>/result.json`` atomically. Then
regenerate run.json/junit/report from the run folder."""

from __future__ import annotations


def run_case_in_folder(run_dir: str, host: str, case: str) -> None:
    raise NotImplementedError(
        f"the engine's case executor is not wired yet: cannot run case {case!r} on host {host!r} "
        f"of {run_dir}; orchestrator/fleet/engine/execute.py:run_case_in_folder must call the "
        "fleet's single-case function")
