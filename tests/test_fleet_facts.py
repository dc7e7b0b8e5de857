"""A host's facts when a run first reaches it (fleet/facts.py), on the scripted lab host."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.fleet.facts import WATCHED_SYSCTLS, probe_host_facts
from orchestrator.transports.fake import FakeShell
from tests.fakehost import FakeLabHost

pytestmark = pytest.mark.usefixtures("stub_kernel_seams")    # tests/conftest.py


def test_the_first_looks_at_a_host_take_one_round_trip_on_the_cases_connection():
    host = FakeLabHost()
    unused = FakeShell(lambda command: (0, ""))
    handles = dataclasses.replace(host.handles(features=("kdump",)), poll_shell=unused)
    facts = probe_host_facts(handles, ExpectationResolver(handles.host))
    assert facts.boot_id == host.boot_id and facts.kernel_release == "7.3.4+deb13-cloud-amd64"
    assert facts.sysctls["vm.panic_on_unrecoverable_memory_failure"] == "0"
    assert set(WATCHED_SYSCTLS) <= set(facts.sysctls)
    first = host.shell.batches[0]
    assert len(first) == 3 and first[0].startswith("cat /proc/sys/kernel/random/boot_id")
    assert host.shell.commands[:3] == first and not unused.commands       # no second connection
