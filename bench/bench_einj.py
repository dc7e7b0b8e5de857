"""EINJ on the virtual lab: how fast the lab's platform firmware (the BMC) answers einj.ko.

    .venv/bin/python bench/bench_einj.py [--injections 10]

Brings up a private one-machine lab, then injects EINJ 0x10 (memory uncorrectable
non-fatal) into free buddy pages (the kernel recovers them; the guest keeps running) through
the guest's own einj.ko, as the orchestrator does. Prints, per injection:

  * doorbell -> machine check raised: from the EXECUTE byte's arrival in the BMC to QEMU's
    answer to the HMP ``mce`` (QMP pmemsave of the request included), as the BMC logs it.
    Target <= 50 ms.
  * write returned -> memory-failure line: from the guest's ``error_inject`` write returning
    (seen by the controller) to the kernel's ``Memory failure: ...`` line in console.log.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.config.inventory import load_inventory  # noqa: E402
from orchestrator.kernel import einj  # noqa: E402
from orchestrator.kernel.facts import probe_facts  # noqa: E402
from orchestrator.kernel.pages import select_target  # noqa: E402
from orchestrator.transports.ssh import FabricShell  # noqa: E402

RAISED = re.compile(r"EINJ type 0x10 at (0x[0-9a-f]+): srao machine check raised ([0-9.]+) ms")


def report(name: str, values: list[float], target: float | None = None) -> None:
    verdict = "" if target is None else ("  ok" if max(values) <= target else f"  OVER {target:g} ms")
    print(f"{name:<40} n={len(values):<3} min {min(values):7.1f}  median {statistics.median(values):7.1f}  "
          f"max {max(values):7.1f} ms{verdict}")


def wait_for(path: Path, pattern: re.Pattern, start: int, timeout: float = 10.0) -> tuple[re.Match, float]:
    """The first match of ``pattern`` in ``path`` after byte ``start``, and when it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            f.seek(start)
            match = pattern.search(f.read().decode(errors="replace"))
        if match:
            return match, time.monotonic()
        time.sleep(0.002)
    raise SystemExit(f"{pattern.pattern!r} not in {path} within {timeout:g} s")


def inject_once(shell: FabricShell, machine_dir: Path, page_size: int) -> tuple[float, float]:
    target = select_target(shell, "free-buddy", arch="x86_64", page_size=page_size, timeout=60)
    bmc_log, console_log = machine_dir / "bmc.log", machine_dir / "console.log"
    bmc_from, console_from = bmc_log.stat().st_size, console_log.stat().st_size
    shell.run(einj.inject_command(0x10, target.phys_addr), timeout=30)
    returned = time.monotonic()
    raised, _ = wait_for(bmc_log, RAISED, bmc_from)
    assert int(raised[1], 16) == target.phys_addr, (raised[0], target)
    _, seen = wait_for(console_log, re.compile(rf"Memory failure: {target.pfn:#x}: "), console_from)
    return float(raised[2]), (seen - returned) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--injections", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-einj-"))
    os.environ.update(ORCH_LAB_DIR=str(work / "lab"), ORCH_VIRTUAL_INVENTORY=str(work / "virtual.yaml"))
    from orchestrator.vlab.lab import lifecycle as lab
    lab.lab_up(hosts=1, log=lambda _: None)
    try:
        host, = load_inventory(work / "virtual.yaml").hosts
        shell = FabricShell(host.ssh)
        why = einj.unusable("einj", 0x10, shell.run(einj.probe_command(), timeout=60, check=False).stdout)
        assert why is None, why
        page_size = probe_facts(shell).page_size
        machine_dir = work / "lab" / "machines" / host.name
        samples = [inject_once(shell, machine_dir, page_size) for _ in range(args.injections)]
        shell.close()
    finally:
        lab.lab_down(log=lambda _: None)
    report("doorbell -> machine check raised", [s[0] for s in samples], target=50)
    report("write returned -> memory-failure line", [s[1] for s in samples])
    return 0


if __name__ == "__main__":
    sys.exit(main())
