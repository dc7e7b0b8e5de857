"""A run's folder as the one record of its progress, whoever writes into it.

    results/<run_id>/run-request.json        what was asked (fleet/plan.py), written once
    results/<run_id>/<host>/<case>/result.json   each finished case, written as it finishes
    results/<run_id>/<host>/_host/facts.json     what the host said when first reached
    results/<run_id>/run.json, junit.xml, report.html   assembled from the above (within
                                                        REPORT_INTERVAL_S, and at the end)

A local run, a resumed run and the fleet engine's workers (several processes, maybe several
machines on a shared filesystem) all write units and assemble the rest from the folder, so
a controller killed at any moment loses at most the case in flight, and a resumed run sees
exactly what had finished. Assembling takes a lock on the folder: two workers finishing
cases at once each write a complete run.json.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import resource
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from orchestrator import __version__
from orchestrator.errors import ConfigError
from orchestrator.fleet.plan import RunPlan
from orchestrator.results import store
from orchestrator.results.model import CaseResult, HostFacts, RunResult
from orchestrator.tunables import REPORT_INTERVAL_S, REPORT_SHARE_LIMIT

FACTS_JSON = "facts.json"


class RunFolder:
    def __init__(self, run_dir: Path, run_id: str, started_at: str, plan: RunPlan, *, shared: bool = False):
        self.run_dir, self.run_id, self.started_at, self.plan = Path(run_dir), run_id, started_at, plan
        self.shared = shared        # other processes write cases here too: read theirs before assembling
        self._lock = threading.Lock()
        self._results: dict[tuple[str, str], CaseResult] = {}
        self._facts: dict[str, HostFacts] = {}
        self._last_reports = 0.0
        self._last_assembly_s = 0.0     # how long the last assembly took
        self._parts = store.ReportParts()   # each finished case's part of the reports, made once

    @classmethod
    def create(cls, base: Path, plan: RunPlan) -> "RunFolder":
        run_id, run_dir = store.new_run_dir(Path(base))
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.write_request(run_dir, plan.request(run_id, started_at))
        return cls(run_dir, run_id, started_at, plan)

    @classmethod
    def open(cls, run_dir: Path, *, shared: bool = False) -> "RunFolder":
        """An existing run folder, with every case that had finished in it."""
        run_dir = Path(run_dir)
        data = store.read_request(run_dir)
        folder = cls(run_dir, data.get("run_id", run_dir.name), data.get("started_at", ""),
                     RunPlan.from_request(data, run_dir / store.REQUEST_JSON), shared=shared)
        folder.reload()
        return folder

    def reload(self) -> None:
        """Take in what other writers (fleet workers) finished meanwhile."""
        results = store.load_case_results(self.run_dir)
        facts = [_read_facts(p) for p in sorted(self.run_dir.glob(f"*/_host/{FACTS_JSON}"))]
        with self._lock:
            for result in results:      # a case already known keeps its object: its report parts are kept by it
                if self._results.get((result.host, result.case)) != result:
                    self._results[result.host, result.case] = result
            self._facts.update({f.host: f for f in facts})

    def finished(self) -> dict[tuple[str, str], CaseResult]:
        with self._lock:
            return dict(self._results)

    def record_facts(self, facts: HostFacts) -> None:
        folder = store.case_dir(self.run_dir, facts.host, "_host")
        store.write_atomic(folder / FACTS_JSON, json.dumps(dataclasses.asdict(facts), indent=2) + "\n")
        with self._lock:
            self._facts[facts.host] = facts

    def record(self, result: CaseResult, *, durable: bool = True) -> None:
        """A case ended. ``durable``: it reached an end a resumed run keeps (a case that never
        started because of Ctrl-C is shown, but not kept: resume runs it)."""
        if durable:
            store.write_case_result(self.run_dir, result)
        if self.shared:
            self.reload()
        with self._lock:
            self._results[(result.host, result.case)] = result
            due = time.monotonic() - self._last_reports >= max(REPORT_INTERVAL_S,
                                                               REPORT_SHARE_LIMIT * self._last_assembly_s)
        self._parts.prepare(result)     # once the case is known: a part that fails loses nothing
        if due:
            self.assemble()

    def assemble(self) -> RunResult:
        """run.json, junit.xml and report.html from every case known, in the plan's order.
        While a run goes on this happens at most every REPORT_INTERVAL_S (each case's own
        result.json is written at once): assembling grows with the run."""
        with self._lock:
            order = {pair: i for i, pair in enumerate(self.plan.pairs())}
            cases = tuple(sorted(self._results.values(), key=lambda r: order.get((r.host, r.case), len(order))))
            hosts = tuple(self._facts[h.name] for h in self.plan.inventory.hosts if h.name in self._facts)
            self._last_reports = time.monotonic()
        run = RunResult(
            run_id=self.run_id, started_at=self.started_at,
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            inventory_path=str(self.plan.inventory.path), inventory_digest=self.plan.inventory.digest,
            playbook_path=str(self.plan.playbook.path), playbook_digest=self.plan.playbook.digest,
            hosts=hosts, cases=cases,
            controller={"version": __version__, "python": sys.version.split()[0], "argv": list(self.plan.argv),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        with self._folder_lock():
            store.write_run(self.run_dir, run, self._parts)
        self._last_assembly_s = time.monotonic() - self._last_reports
        return run

    @contextmanager
    def _folder_lock(self) -> Iterator[None]:
        with open(self.run_dir / ".assemble.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def _read_facts(path: Path) -> HostFacts:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return HostFacts(**{k: tuple(v) if k in ("semantics_evidence", "features") else v for k, v in data.items()})
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read host facts: {exc}", path=str(path)) from None
