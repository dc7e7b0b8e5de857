"""The pytest face's run: one run folder per pytest session, written exactly as a CLI run's
(fleet/run_folder.py: run.json, junit.xml, report.html, per-case folders), with each host
opened once for the session and its cases run through fleet/host_run.py, the CLI's code.

Under pytest-xdist every worker writes into the one folder the controller made (each case
its own result.json; run.json assembled under the folder's lock). A host lost in one test
stays lost for the session: its later tests end at once with the case that lost it.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

from orchestrator.config.model import Host, Inventory
from orchestrator.config.playbook import Case, Playbook
from orchestrator.fleet.host_run import HostRun
from orchestrator.fleet.plan import RunPlan
from orchestrator.fleet.run_folder import RunFolder
from orchestrator.results import store
from orchestrator.results.model import CaseResult

#: The run folder's record of what was asked: a pytest session has no playbook file.
SESSION_PLAYBOOK = "pytest session"


class OrchSession:
    def __init__(self, folder: RunFolder):
        self.folder = folder
        self._stack = ExitStack()
        self._hosts: dict[str, HostRun] = {}
        self._lock = threading.Lock()

    @classmethod
    def create(cls, inventory: Inventory, results_base: Path, argv: tuple[str, ...],
               lease_wait_s: float) -> "OrchSession":
        return cls(RunFolder.create(results_base, _plan(inventory, argv, lease_wait_s)))

    @classmethod
    def join(cls, inventory: Inventory, run_dir: Path, lease_wait_s: float) -> "OrchSession":
        """An xdist worker's view of the folder its controller made."""
        request = store.read_request(run_dir)
        plan = _plan(inventory, tuple(request.get("argv", ())), lease_wait_s)
        return cls(RunFolder(run_dir, request["run_id"], request.get("started_at", ""), plan, shared=True))

    def run(self, host: Host, case: Case) -> CaseResult:
        return self._host_run(host).run_one(case)

    def _host_run(self, host: Host) -> HostRun:
        with self._lock:
            if host.name not in self._hosts:
                host_run = HostRun(self.folder, host, release_between_cases=True)
                self._stack.enter_context(host_run.opened())
                self._hosts[host.name] = host_run
            return self._hosts[host.name]

    def close(self) -> None:
        """Close the hosts; assemble the run folder with what every worker wrote."""
        self._stack.close()
        self.folder.reload()
        self.folder.assemble()


def _plan(inventory: Inventory, argv: tuple[str, ...], lease_wait_s: float) -> RunPlan:
    playbook = Playbook(path=Path(SESSION_PLAYBOOK), name=SESSION_PLAYBOOK, cases=(), digest="")
    return RunPlan(inventory=inventory, playbook=playbook, argv=argv, lease_wait_s=lease_wait_s)
