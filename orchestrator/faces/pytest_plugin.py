"""pytest face of the orchestrator (labgrid-style): an inventory option, one test item per
host, and markers that select hosts by platform and feature.

    @pytest.mark.platform("qemu-x86_64")
    @pytest.mark.needs("hwpoison_inject")
    def test_rodata_panics(orch_host, orch_case):
        result = orch_case(orch_host, "playbooks/smoke.yaml", "rodata-panic")
        assert result.verdict == "pass", result.reasons

``--inventory`` (or ``ORCH_INVENTORY``) names the inventory; tests asking for ``orch_host``
are skipped when none is given. Markers ``platform(name, ...)`` and ``needs(feature, ...)``
skip the hosts that do not match, with the reason.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("orchestrator", "memory-failure qualification")
    group.addoption("--inventory", default=os.environ.get("ORCH_INVENTORY"),
                    help="inventory YAML of the hosts to qualify (env ORCH_INVENTORY)")
    group.addoption("--orch-results", default=None, help="folder for per-case results (default: pytest tmp)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "platform(name, ...): run only on hosts of these platforms")
    config.addinivalue_line("markers", "needs(feature, ...): run only on hosts declaring all these features")


def _inventory(config: pytest.Config):
    from orchestrator.config.inventory import load_inventory

    path = config.getoption("--inventory")
    return load_inventory(Path(path)) if path else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "orch_host" not in metafunc.fixturenames:
        return
    inventory = _inventory(metafunc.config)
    if inventory is None:
        metafunc.parametrize("orch_host", [pytest.param(None, marks=pytest.mark.skip(reason="no --inventory given"))])
        return
    metafunc.parametrize("orch_host", list(inventory.hosts), ids=[h.name for h in inventory.hosts])


def host_skip_reason(host, markers) -> str | None:
    """Why the ``platform``/``needs`` markers exclude ``host`` (None: they do not)."""
    for mark in markers:
        if mark.name == "platform" and host.platform not in mark.args:
            return f"host {host.name} is {host.platform}, test wants {', '.join(mark.args)}"
        if mark.name == "needs":
            missing = [f for f in mark.args if f not in host.features]
            if missing:
                return f"host {host.name} lacks feature(s) {', '.join(missing)}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    callspec = getattr(item, "callspec", None)
    host = callspec.params.get("orch_host") if callspec else None
    if host is not None:
        why = host_skip_reason(host, list(item.iter_markers()))
        if why:
            pytest.skip(why)


@pytest.fixture
def orch_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Run one playbook case on one host through the real backends, the way ``orchestrator
    run`` runs it (fleet/case_run.py); returns its CaseResult, artifacts written."""
    from orchestrator.config.applicability import skip_reason
    from orchestrator.config.playbook import load_playbook
    from orchestrator.cycle.expectations import ExpectationResolver
    from orchestrator.fleet.case_run import run_case
    from orchestrator.fleet.host_handles import open_host

    with ExitStack() as opened:       # hosts stay open until the test ends, then close
        def run(host, playbook: str, case_name: str):
            case = load_playbook(playbook).select((case_name,)).cases[0]
            why = skip_reason(host, case)
            if why:
                pytest.skip(why)
            base = request.config.getoption("--orch-results")
            folder = Path(base) if base else tmp_path_factory.mktemp(f"{host.name}-{case_name}")
            session = opened.enter_context(open_host(host, folder))
            return run_case(session, case, ExpectationResolver(), folder, run_dir=folder)

        yield run
