"""Soak: many consecutive cases (the nightly's mix, repeated) on one lab machine, counting
the errors nobody asked for. LAVA-style labs live or die by their infra-error rate: the
target is 0 spurious errors in 200 cases. Prints each such error's reason.

    .venv/bin/python bench/bench_soak.py [--cases 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.fleet.plan import RunPlan  # noqa: E402
from orchestrator.fleet.runner import Runner  # noqa: E402
from orchestrator.vlab.lab import lifecycle as lab  # noqa: E402


def soak_plan(inventory: Path, count: int) -> RunPlan:
    """The nightly's cases repeated (renamed per round) until ``count`` cases."""
    plan = RunPlan.load(inventory, REPO / "playbooks/nightly.yaml")
    base = plan.playbook.cases
    cases = tuple(dataclasses.replace(base[i % len(base)], name=f"{base[i % len(base)].name}-{i // len(base):03d}")
                  for i in range(count))
    return dataclasses.replace(plan, playbook=dataclasses.replace(plan.playbook, cases=cases))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    os.environ.setdefault("ORCH_LAB_DIR", str(work / "lab"))
    os.environ.setdefault("ORCH_VIRTUAL_INVENTORY", str(work / "virtual.yaml"))
    lab.lab_up(hosts=1, arch="x86_64", log=lambda _: None)
    try:
        t0 = time.monotonic()
        run = Runner.new(soak_plan(Path(os.environ["ORCH_VIRTUAL_INVENTORY"]), args.cases), work / "results").run()
        wall = time.monotonic() - t0
    finally:
        lab.lab_down(log=lambda _: None)
    counts = Counter(c.verdict for c in run.cases)
    spurious = [c for c in run.cases if c.verdict == "error"]
    print(f"{len(run.cases)} cases in {wall / 60:.1f} min: {dict(counts)}")
    print(f"spurious errors (no fault was injected): {len(spurious)} of {len(run.cases)}  [target 0]")
    for case in spurious:
        print(f"  {case.case}: [{case.blame}] {case.reasons[0] if case.reasons else ''}")
    fails = [c for c in run.cases if c.verdict == "fail"]
    for case in fails:
        print(f"  FAIL {case.case}: {case.reasons[0] if case.reasons else ''}")
    print(f"run folder: {work / 'results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
