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
