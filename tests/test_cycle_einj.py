"""EINJ in the cycle on fake transports: a firmware without EINJ is an error verdict before
anything is injected, and an injection the firmware refused is an error naming the remedy,
never a survived (or failed) case."""

from __future__ import annotations

import pytest

from orchestrator.cycle import machine, phases
from orchestrator.cycle.machine import CaseCycle
from orchestrator.kernel.injectors import Einj
from tests.fakehost import FakeLabHost
from tests.test_cycle import make_case

pytestmark = pytest.mark.usefixtures("stub_kernel_seams")    # tests/conftest.py


class PreparedEinj(Einj):
    """The real injector's command and refusals, on a host that passed the preflight."""

    def unavailable_reason(self, shell, *, arch):
        return None

    def prepare(self, shell):
        pass


class RefusingFirmwareHost(FakeLabHost):
    def _answer(self, command):
        if command.startswith("cat ") and command.split()[1].endswith("/inject.err"):
            return 0, "sh: write error: Device or resource busy\neinj: writing 1 to error_inject failed\n"
        return super()._answer(command)


def test_an_injection_the_firmware_refused_is_a_firmware_error_with_the_remedy(monkeypatch):
    for module in (phases, machine):
        monkeypatch.setattr(module, "make_injector", lambda name: PreparedEinj())
    host = RefusingFirmwareHost(behaviour="no-panic")
    result = CaseCycle(host.handles(), make_case(injector="einj")).run().result
    assert (result.verdict, result.blame) == ("error", "firmware"), result.reasons
    assert "EBUSY" in result.reasons[0] and "BIOS setup" in result.reasons[0]
    assert any(e.source == "inject" and "exit status 16" in e.text for e in result.evidence)
    assert [c for c in host.shell.commands if c.startswith("detached: ")][0].count("w error_inject 1") == 1


def test_a_host_without_an_einj_table_is_a_firmware_error_before_injecting(monkeypatch):
    monkeypatch.setattr(phases, "make_injector", lambda name: Einj())
    host = FakeLabHost()
    result = CaseCycle(host.handles(), make_case(injector="einj")).run().result
    assert (result.verdict, result.blame) == ("error", "firmware"), result.reasons
    assert "no ACPI EINJ table" in result.reasons[0]
    assert not host.injected and not any(c.startswith("detached: ") for c in host.shell.commands)
