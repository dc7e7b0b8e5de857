"""pytest face of the orchestrator (labgrid-style): an inventory option, one test item per
host, markers that select hosts by platform and feature, and ``orch_case`` to run a case:

    @pytest.mark.platform("qemu-x86_64")
    @pytest.mark.needs("hwpoison_inject")
    def test_rodata_panics(orch_host, orch_case):
        result = orch_case(orch_host, "playbooks/smoke.yaml", "rodata-panic")
        assert result.verdict == "pass", result.reasons

    @pytest.mark.parametrize("target", ["kernel-rodata", "slab"])
    def test_inline(orch_host, orch_case, target):
        result = orch_case(orch_host, injector="hwpoison_inject", target=target,
                           sysctls={"vm.panic_on_unrecoverable_memory_failure": 1},
                           expect={"outcome": "panic", "signature": "new"})

``--inventory`` (or ``ORCH_INVENTORY``) names the inventory; tests asking for ``orch_host``
are skipped when none is given. Cases run through the CLI's own code into one run folder
per session (``--orch-results``, default results/), with its run.json, junit.xml and
report.html. Under pytest-xdist the host lease keeps each host to one case at a time (a
worker waits for a sibling's case), and ``--dist loadgroup`` asks xdist to keep a host's
tests on one worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_SESSION = pytest.StashKey["object"]()
_RUN_DIR = "orch_run_dir"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("orchestrator", "memory-failure qualification")
    group.addoption("--inventory", default=os.environ.get("ORCH_INVENTORY"),
                    help="inventory YAML of the hosts to qualify (env ORCH_INVENTORY)")
    group.addoption("--orch-results", default=None,
                    help="folder the session's run folder is made in (default: the results folder)")
    group.addoption("--orch-lease-wait", type=float, default=None, metavar="SECONDS",
                    help="wait up to this long for a host leased by another run (default: 0; under "
                         "pytest-xdist, long enough for a sibling worker's case)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "platform(name, ...): run only on hosts of these platforms")
    config.addinivalue_line("markers", "needs(feature, ...): run only on hosts declaring all these features")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist --dist loadgroup keeps a group on one worker")


def _inventory(config: pytest.Config):
    from orchestrator.config.inventory import load_inventory

    path = config.getoption("--inventory")
    return load_inventory(Path(path)) if path else None


def _session(config: pytest.Config):
    """The session's run folder, made on first use (by the xdist controller, when there is one)."""
    if _SESSION not in config.stash:
        from orchestrator import paths
        from orchestrator.faces.pytest_session import OrchSession

        from orchestrator.tunables import XDIST_LEASE_WAIT_S

        run_dir = getattr(config, "workerinput", {}).get(_RUN_DIR)
        inventory, wait = _inventory(config), config.getoption("--orch-lease-wait")
        if wait is None:        # a sibling worker may hold the host: wait for it, do not fail
            wait = XDIST_LEASE_WAIT_S if run_dir else 0.0
        if run_dir:
            config.stash[_SESSION] = OrchSession.join(inventory, Path(run_dir), wait)
        else:
            base = Path(config.getoption("--orch-results") or paths.results_dir())
            config.stash[_SESSION] = OrchSession.create(inventory, base, tuple(sys.argv[1:]), wait)
    return config.stash[_SESSION]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist: every worker writes into the controller's one run folder."""
    if node.config.getoption("--inventory"):
        node.workerinput[_RUN_DIR] = str(_session(node.config).folder.run_dir)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "orch_host" not in metafunc.fixturenames:
        return
    inventory = _inventory(metafunc.config)
    if inventory is None:
        metafunc.parametrize("orch_host", [pytest.param(None, marks=pytest.mark.skip(reason="no --inventory given"))])
        return
    metafunc.parametrize("orch_host", list(inventory.hosts), ids=[h.name for h in inventory.hosts])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One xdist group per host (``--dist loadgroup``): a host's tests stay on one worker.
    (pytest 9.2 made node ids read-only and xdist 3.8's grouping silently stopped working;
    the host lease, waited for under xdist, keeps each host to one case at a time anyway.)"""
    for item in items:
        callspec = getattr(item, "callspec", None)
        host = callspec.params.get("orch_host") if callspec else None
        if host is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(host.name))


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


def _skip(why: str):
    """A skip reported at the user's test, not at this plugin's line."""
    return pytest.skip.Exception(why, _use_item_location=True)


def pytest_runtest_setup(item: pytest.Item) -> None:
    callspec = getattr(item, "callspec", None)
    host = callspec.params.get("orch_host") if callspec else None
    if host is not None:
        why = host_skip_reason(host, list(item.iter_markers()))
        if why:
            raise _skip(why)


@pytest.fixture
def orch_case(request: pytest.FixtureRequest):
    """Run a case on a host through the CLI's own code, recorded in the session's run folder;
    returns its CaseResult. Name a playbook case, ``orch_case(host, PLAYBOOK, CASE)``, or
    write one inline with the playbook's fields, ``orch_case(host, injector=..., target=...,
    sysctls=..., expect=...)``. A case whose limits exclude the host is skipped (and recorded
    as skipped in the run folder, as the CLI records it)."""
    def run(host, playbook: str | None = None, case_name: str | None = None, **inline):
        result = _session(request.config).run(host, _case(request, playbook, case_name, inline))
        if result.verdict == "skip":
            raise _skip(result.reasons[0])
        return result

    return run


def _case(request: pytest.FixtureRequest, playbook: str | None, case_name: str | None, inline: dict):
    from orchestrator.config.playbook import build_case, load_playbook

    if playbook is not None:
        return load_playbook(playbook).select((case_name,)).cases[0]
    name = inline.pop("name", None) or request.node.name
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.") or "case"
    return build_case({"name": safe, **inline}, f"{request.node.nodeid}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _SESSION in session.config.stash:
        session.config.stash[_SESSION].close()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if _SESSION in config.stash and not hasattr(config, "workerinput"):
        run_dir = config.stash[_SESSION].folder.run_dir
        terminalreporter.write_line(f"orchestrator run folder: {run_dir} (report.html, run.json, junit.xml)")
