"""Shared fixtures. End-to-end tests bring up their own virtual lab in a private folder and
always take it down: no QEMU or BMC outlives the test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlabs import private_lab


@pytest.fixture(scope="module")
def vlab_x86(tmp_path_factory) -> Path:
    """One x86_64 lab machine behind its own BMC; yields the lab's inventory file."""
    yield from private_lab(tmp_path_factory, arch="x86_64", hosts=1)


@pytest.fixture(scope="module")
def vlab_arm(tmp_path_factory) -> Path:
    """One aarch64 lab machine. Module scope: a lab is only up while its tests run."""
    yield from private_lab(tmp_path_factory, arch="aarch64", hosts=1)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The files an inventory refers to: an SSH key, a known_hosts and a BMC password file."""
    (tmp_path / "id_key").write_text("not a real key\n")
    (tmp_path / "known_hosts").write_text("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample\n")
    (tmp_path / "bmc-password").write_text("secret\n")
    return tmp_path


@pytest.fixture
def stub_kernel_seams(monkeypatch):
    """The scenario host (tests/fakehost.py) decides what the kernel does, so the state
    machine is what is under test; returns the stub kernel's sysctls."""
    from tests.fakehost import install_kernel_stubs

    sysctls = {"vm.panic_on_unrecoverable_memory_failure": "0", "kernel.panic": "0"}
    install_kernel_stubs(monkeypatch.setattr, sysctls)
    return sysctls


@pytest.fixture
def bmc(tmp_path):
    """A real pyghmi BMC (the lab's) on loopback, power kept in memory: for transport tests."""
    from test_transport_peers import LoopbackBmc

    peer = LoopbackBmc(tmp_path / "m1")
    yield peer
    peer.stop()


def _fetch_test_busybox() -> str | None:
    """Debian's busybox-static (the lab guests' userspace), fetched once through the image
    builder's private apt configuration, so the target-selection script is also tested
    under busybox sh/awk on a fresh machine. None when it cannot be had."""
    import shutil
    import subprocess

    from orchestrator.errors import OrchestratorError
    from orchestrator.paths import cache_dir
    from orchestrator.vlab.image.apt import PrivateApt

    target = cache_dir() / "test-busybox"
    binary = target / "bin" / "busybox"
    if binary.is_file():
        return str(binary)
    try:
        apt = PrivateApt.default()
        with apt.locked():
            apt.prepare()
            apt.update_if_stale()
            info = apt.show(["busybox-static:amd64"])["busybox-static:amd64"]
            deb = apt.download({info.name: info.version})[info.name]
        tmp = target.with_name("test-busybox.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, capture_output=True)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return str(binary) if binary.is_file() else None
    except (OrchestratorError, OSError, subprocess.CalledProcessError):
        return None


def pytest_configure(config) -> None:
    if "ORCH_TEST_BUSYBOX" not in os.environ and os.uname().machine == "x86_64":
        found = _fetch_test_busybox()
        if found:
            os.environ["ORCH_TEST_BUSYBOX"] = found


@pytest.fixture(scope="session")
def pg_dsn():
    """A private PostgreSQL cluster with procrastinate's schema; always stopped."""
    from orchestrator.fleet.engine.app import prepare_database
    from pgcluster import private_postgres

    with private_postgres() as dsn:
        prepare_database(dsn)       # applies procrastinate's schema on the empty database
        yield dsn
