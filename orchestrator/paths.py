"""Where things live on the controller. Every location can be moved by an environment knob."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository root (the folder holding ``orchestrator/``, ``inventories/``, ``playbooks/``).
REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Downloads and built images. ``ORCH_CACHE_DIR`` overrides; kept across clones so a
    second run (or a second CI run on the same machine) is fast."""
    env = os.environ.get("ORCH_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "memfail-orchestrator"
    return base


def lab_dir() -> Path:
    """Runtime state of the virtual lab (machine disks, sockets, pid files, keys).
    ``ORCH_LAB_DIR`` overrides."""
    env = os.environ.get("ORCH_LAB_DIR")
    return Path(env) if env else cache_dir() / "lab"


def results_dir() -> Path:
    env = os.environ.get("ORCH_RESULTS_DIR")
    return Path(env) if env else REPO_ROOT / "results"


def virtual_inventory() -> Path:
    env = os.environ.get("ORCH_VIRTUAL_INVENTORY")
    return Path(env) if env else REPO_ROOT / "inventories" / "virtual.yaml"
