"""Firmware injectors on fake transports: the cycle asks the host's platform firmware (through
the BMC) to report the error instead of running a command on the host, and a host whose
firmware cannot is an error verdict with nothing injected."""

from __future__ import annotations

import pytest

from orchestrator.cycle import machine, phases
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
    for module in (phases, machine):     # the inject step, and read_live's refusal check
        monkeypatch.setattr(module, "make_injector", lambda name: ScrubberMce())


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


class ConsoleLosesThePanicLine(FakeLabHost):
    """Seen on the lab: bytes of the panic line lost in QEMU's own serial log."""

    def kernel_lines(self):
        return [line.replace("Kernel panic", "ernel panic") for line in super().kernel_lines()]

    def _inject(self, command):
        super()._inject(command)
        if self.dumps:     # the dump's dmesg, written by the crash kernel, has the whole line
            stamp = self.dump_stamp
            dump = self.dumps[stamp]
            self.dumps[stamp] = type(dump)(**{**dump.__dict__, "dmesg": dump.dmesg.replace("ernel panic", "Kernel panic")})


def test_a_panic_the_console_missed_is_found_by_its_dump_and_blamed_on_the_console(firmware_injector):
    host = ConsoleLosesThePanicLine()
    result = CaseCycle(handles_with(host, FakeFirmware(host)), make_case(injector="test_mce")).run().result
    states = [t.state for t in result.timings]
    assert states[:8] == ["preflight", "armed", "targeted", "injected", "survived", "lost", "dumped", "collected"], states
    assert result.verdict == "error", result.reasons          # not a kernel "fail": the kernel did panic
    assert any("console: no kernel panic line, although the other source shows it" in r for r in result.reasons)
    assert any(e.source == "dump-dmesg" and "unrecoverable page" in e.text for e in result.evidence)
