"""Shared fixtures. End-to-end tests bring up their own virtual lab in a private folder and
always take it down: no QEMU or BMC outlives the test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vlab_x86(tmp_path_factory) -> Path:
    """One x86_64 lab machine behind its own BMC; yields the lab's inventory file."""
    from orchestrator.vlab import lab

    base = tmp_path_factory.mktemp("e2e-lab")
    saved = {k: os.environ.get(k) for k in ("ORCH_LAB_DIR", "ORCH_VIRTUAL_INVENTORY")}
    inventory = base / "virtual.yaml"
    os.environ.update(ORCH_LAB_DIR=str(base / "lab"), ORCH_VIRTUAL_INVENTORY=str(inventory))
    try:
        lab.lab_up(hosts=1, arch="x86_64")
        yield inventory
    finally:
        lab.lab_down(log=lambda _: None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
