"""A virtual lab in a private folder, for end-to-end tests."""

from __future__ import annotations

import os


def private_lab(tmp_path_factory, **lab_up_args):
    """Bring up a lab in a private folder (``lab_up`` arguments as given), yield its inventory,
    always take it down and put the environment back."""
    from orchestrator.vlab.lab import lifecycle as lab

    base = tmp_path_factory.mktemp("e2e-lab")
    saved = {k: os.environ.get(k) for k in ("ORCH_LAB_DIR", "ORCH_VIRTUAL_INVENTORY")}
    inventory = base / "virtual.yaml"
    os.environ.update(ORCH_LAB_DIR=str(base / "lab"), ORCH_VIRTUAL_INVENTORY=str(inventory))
    try:
        lab.lab_up(**lab_up_args)
        yield inventory
    finally:
        lab.lab_down(log=lambda _: None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def on_host(inventory, host: str, command: str) -> str:
    """Run ``command`` on a lab machine out of band (as an operator or a failing host would),
    through the orchestrator's own SSH transport and the inventory's pinned host key."""
    from orchestrator.config.inventory import load_inventory
    from orchestrator.transports.ssh import FabricShell

    shell = FabricShell(load_inventory(inventory).host(host).ssh)
    try:
        return shell.run(command, timeout=60).stdout.strip()
    finally:
        shell.close()


def cli(*args: str, **popen):
    """``python -m orchestrator ARGS`` as a subprocess, stdout and stderr piped."""
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=Path(__file__).resolve().parents[1],
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def finished(proc, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def only_run(results):
    """The one run folder under ``results``."""
    runs = [p for p in results.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def nightly_cases(*, without_injector: str) -> str:
    """playbooks/nightly.yaml's case names but those of one injector, for ``--cases``. CI runs
    the nightly's qemu_mce cases only through tests/test_e2e_mce.py's smaller playbook: the
    full machine-check matrix costs ~85 s of lab time per run (measured), the nightly's job."""
    from pathlib import Path

    from orchestrator.config.playbook import load_playbook

    playbook = load_playbook(Path(__file__).resolve().parents[1] / "playbooks" / "nightly.yaml")
    return ",".join(c.name for c in playbook.cases if c.injector != without_injector)


def lacks_injector(case) -> bool:
    """A case skipped because the host lacks its injector's feature (the nightly's GHES cases on
    a machine without a RAS platform): right for that host, and no verdict on the kernel."""
    return case.verdict == "skip" and any("host lacks feature" in reason for reason in case.reasons)
