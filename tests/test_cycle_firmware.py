"""Firmware injectors on fake transports: the cycle asks the host's platform firmware (through
the BMC) to report the error instead of running a command on the host, and a host whose
firmware cannot is an error verdict with nothing injected."""

from __future__ import annotations

import pytest

from orchestrator.cycle import phases
from orchestrator.cycle.machine import CaseCycle
from orchestrator.errors import UnsupportedOperation
from orchestrator.kernel.injectors import FirmwareInjector
from orchestrator.protocols.firmware import FirmwareErrorProtocol
from tests.fakehost import FakeLabHost
from tests.test_cycle import make_case

pytestmark = pytest.mark.usefixtures("stub_kernel_seams")    # tests/conftest.py


class ScrubberMce(FirmwareInjector):
    name = feature = "test_mce"
    path, severity = "mce", "srao"


class FakeFirmware(FirmwareErrorProtocol):
    def __init__(self, host: FakeLabHost, refuse: str | None = None):
        self.host, self.refuse, self.reports = host, refuse, []

    def report_memory_error(self, phys_addr, *, path, severity):
        if self.refuse:
            raise UnsupportedOperation(self.refuse)
        self.reports.append((phys_addr, path, severity))
        self.host._inject("(machine check)")     # the platform raises it; the kernel reacts


@pytest.fixture
def firmware_injector(monkeypatch):
    monkeypatch.setattr(phases, "make_injector", lambda name: ScrubberMce())


def handles_with(host, firmware):
    handles = host.handles()
    handles.firmware = firmware
    return handles


def test_panic_case_is_reported_by_the_firmware_and_judged_as_any_other(firmware_injector):
    host = FakeLabHost()
    firmware = FakeFirmware(host)
    result = CaseCycle(handles_with(host, firmware), make_case(injector="test_mce")).run().result
    assert result.verdict == "pass", result.reasons
    assert firmware.reports == [(0x38830000, "mce", "srao")]
    assert not any("corrupt-pfn" in c for c in host.shell.commands), "nothing is written on the host"
    assert any(e.source == "dump-dmesg" and "unrecoverable page" in e.text for e in result.evidence)


@pytest.mark.parametrize("firmware, says", [(None, "no BMC"), ("refuse", "no such error path")])
def test_host_whose_firmware_cannot_report_is_an_error_with_nothing_injected(firmware_injector, firmware, says):
    host = FakeLabHost()
    fw = FakeFirmware(host, refuse="the BMC's firmware has no such error path on this machine") if firmware else None
    result = CaseCycle(handles_with(host, fw), make_case(injector="test_mce")).run().result
    assert result.verdict == "error", result.reasons
    assert any(says in r for r in result.reasons), result.reasons
    assert not host.injected and host.up
