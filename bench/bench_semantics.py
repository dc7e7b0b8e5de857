"""The whole nightly on each lab kernel (a nightly job, not a CI test): one machine per kernel
flavour, playbooks/nightly.yaml through the real runner, every expectation from the semantics
the host was found to have. Prints per kernel: the semantics and how they were decided, the
verdicts, and the wall time; exits 1 if any case failed or ended in an error (skips are listed:
a missing sysctl on the legacy kernels, a feature the lab machine lacks).

    /work/bin/labslot .venv/bin/python bench/bench_semantics.py [--kernels backports,backports-7.2,bookworm]

CI proves the same on a few cases per kernel: tests/test_e2e_semantics.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.faces.cli.main import main as cli_main  # noqa: E402
from orchestrator.results.store import load_run  # noqa: E402
from orchestrator.vlab.image.kernels import KERNEL_FLAVOURS  # noqa: E402
from orchestrator.vlab.lab import lifecycle as lab  # noqa: E402

SYSCTL = "vm.panic_on_unrecoverable_memory_failure"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default=",".join(KERNEL_FLAVOURS), help="one machine per flavour")
    args = parser.parse_args()
    kernels = tuple(args.kernels.split(","))
    base = Path(tempfile.mkdtemp(prefix="bench-semantics-"))
    os.environ.update(ORCH_LAB_DIR=str(base / "lab"), ORCH_VIRTUAL_INVENTORY=str(base / "virtual.yaml"))
    started = time.monotonic()
    try:
        lab.lab_up(kernels=kernels, log=lambda _msg: None)
        up = time.monotonic() - started
        cli_main(["run", "-i", str(base / "virtual.yaml"), str(REPO / "playbooks/nightly.yaml"),
                  "--results", str(base / "results")])
    finally:
        lab.lab_down(log=lambda _msg: None)
    run = load_run(next(p for p in (base / "results").iterdir() if p.is_dir()))
    print(f"\nlab up {up:.0f} s, nightly on {len(kernels)} kernels {time.monotonic() - started - up:.0f} s")
    ok = True
    for facts in run.hosts:
        cases = [c for c in run.cases if c.host == facts.host]
        verdicts = Counter(c.verdict for c in cases)
        print(f"{facts.host}: {facts.kernel_release}: {facts.semantics} "
              f"({facts.semantics_evidence[-1] if facts.semantics_evidence else '?'}); "
              + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())))
        for case in cases:
            if case.verdict in ("fail", "error"):
                ok = False
            if case.verdict != "pass" and not any(SYSCTL in r for r in case.reasons):
                print(f"  {case.case}: {case.verdict}: {'; '.join(case.reasons)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
