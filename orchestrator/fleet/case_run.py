"""One case on one open host, start to artifacts on disk: the path both faces take.

The cycle returns what it produced (cycle/steps.py ``CaseRun``); this writes it into the
case's folder (console transcript with times, dump dmesg, metadata) next to the commands
log, and returns the result naming those files.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from orchestrator.config.playbook import Case
from orchestrator.cycle.machine import CaseCycle
from orchestrator.cycle.steps import CaseRun
from orchestrator.fleet.host_handles import HostSession
from orchestrator.results import store
from orchestrator.results.model import CaseResult


def run_case(session: HostSession, case: Case, resolver: Callable, folder: Path, *, run_dir: Path,
             on_state: Callable[[str, str], None] | None = None, run_id: str = "adhoc") -> CaseResult:
    """Run ``case``; its commands are logged to ``folder``/commands.log, its artifacts written
    there, and named in the result relative to ``run_dir``."""
    folder.mkdir(parents=True, exist_ok=True)
    session.commands.point_at(folder / "commands.log")
    run = CaseCycle(session.handles, case, expect_resolver=resolver, on_state=on_state, run_id=run_id).run()
    return write_artifacts(run, folder, run_dir)


def write_artifacts(run: CaseRun, folder: Path, run_dir: Path) -> CaseResult:
    result, artifacts = run.result, {}

    def keep(name: str, text: str | None = None) -> None:
        if text is not None:
            store.write_atomic(folder / name, text)
        artifacts[name] = str((folder / name).relative_to(run_dir))

    if run.console is not None:
        keep("console.log", "".join(f"[{line.t - run.console_t0:+10.3f}] {line.text}\n" for line in run.console))
    if (folder / "commands.log").exists():
        keep("commands.log")
    if run.dump_dmesg:
        keep("dmesg", run.dump_dmesg)
    meta = {"case": result.case, "host": result.host, "verdict": result.verdict, "pfn": result.pfn,
            "dump": result.dump, "boot_id_before": result.boot_id_before, "boot_id_after": result.boot_id_after,
            "panic_after_inject_s": result.panic_after_inject_s, "recovery": list(result.recovery)}
    keep("metadata.json", json.dumps(meta, indent=2, sort_keys=True))
    return replace(result, artifacts=artifacts)
