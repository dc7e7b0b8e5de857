"""The BMC's System Event Log: the lab BMC's store and IPMI commands, the guest's KCS wire
protocol, the orchestrator's reader (driven against the lab BMC's own handlers), the
playbook's ``expect.sel`` and the cycle keeping the case window's records as evidence."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.config.playbook import load_playbook
from orchestrator.cycle import sel_window
from orchestrator.cycle.machine import CaseCycle
from orchestrator.errors import FIRMWARE, ConfigError
from orchestrator.protocols.event_log import EventLogProtocol, panic_text
from orchestrator.transports import ipmi_sel
from orchestrator.transports.ipmi_sel import IpmiEventLog, describe
from orchestrator.vlab.bmc import kcs_link, raw_commands, sel, sel_commands  # noqa: F401 (registers)
from orchestrator.vlab.qemu import platform_errors
from tests.fakehost import FakeLabHost
from tests.test_cycle import make_case
from tests.test_vlab_bmc import PASSWORD, USER, ipmitool, stand_in_bmc_process

# what the 7.3 kernel sent at `echo c > /proc/sysrq-trigger` (sel-in-band.md), unframed
KERNEL_PANIC_EVENT = bytes.fromhex("41032073 6fa17973".replace(" ", ""))
KERNEL_TEXT = [bytes.fromhex("0000f02000737973727120747269676700"[:32]),
               bytes.fromhex("0000f020016572656420637261736800")]


class FakeBmc:
    """What the SEL handlers use of QemuBmc: the machine dir and the device id fields."""

    def __init__(self, machine_dir: Path):
        self.config = SimpleNamespace(machine_dir=machine_dir)
        self.deviceid, self.revision, self.firmwaremajor, self.firmwareminor = 0x20, 0x81, 1, 0
        self.additionaldevices, self.mfgid, self.prodid = 0x04, 0x7ed9, 1


@pytest.fixture
def bmc(tmp_path):
    sel._LOGS.clear()       # one SelLog per machine dir per process; tests each have their own
    return FakeBmc(tmp_path)


class LabBmcPower:
    """IpmiPower.raw answered by the lab BMC's registered handlers (no network)."""

    def __init__(self, bmc):
        self.bmc, self.calls = bmc, 0

    def raw(self, action, netfn, command, data=b""):
        self.calls += 1
        return raw_commands.answer(self.bmc, netfn, command, bytes(data))


def add(bmc, record: bytes) -> int:
    code, data = raw_commands.answer(bmc, ipmi_sel.NETFN_STORAGE, ipmi_sel.CMD_ADD_SEL_ENTRY, record)
    assert code == 0
    return struct.unpack("<H", data)[0]


def test_records_get_ids_and_times_and_survive_a_bmc_restart(bmc, tmp_path):
    code, _ = raw_commands.answer(bmc, 0x04, 0x02, KERNEL_PANIC_EVENT)
    assert code == 0
    assert [add(bmc, r) for r in KERNEL_TEXT] == [2, 3]
    sel._LOGS.clear()                                   # a new BMC process reads sel.json
    log = IpmiEventLog(LabBmcPower(bmc))
    records = log.records_after(None)
    assert [r.record_id for r in records] == [1, 2, 3] and log.last_record_id() == 3
    assert records[0].text == "OS Critical Stop #0x73 | Run-time critical stop | Asserted"
    assert abs(records[0].timestamp - time.time()) < 5 and records[1].timestamp is None
    assert panic_text(records) == "sysrq triggered crash"
    assert [r.record_id for r in log.records_after(1)] == [2, 3] and log.records_after(3) == ()


def test_sel_info_clear_and_missing_records(bmc):
    add(bmc, KERNEL_TEXT[0])
    code, info = raw_commands.answer(bmc, 0x0A, 0x40, b"")
    assert code == 0 and info[0] == 0x51 and struct.unpack_from("<H", info, 1)[0] == 1
    assert raw_commands.answer(bmc, 0x0A, 0x43, struct.pack("<HHBB", 0, 9, 0, 0xFF))[0] == ipmi_sel.CC_NOT_PRESENT
    assert raw_commands.answer(bmc, 0x0A, 0x47, b"\0\0CLX\xaa")[0] == 0xCC     # not 'CLR': refused
    assert raw_commands.answer(bmc, 0x0A, 0x47, b"\0\0CLR\xaa") == (0, b"\x01")
    log = IpmiEventLog(LabBmcPower(bmc))
    assert log.last_record_id() is None and log.records_after(None) == ()
    assert add(bmc, KERNEL_TEXT[1]) == 2                # ids are not reused after a clear
    assert [r.record_id for r in log.records_after(1)] == [2]   # record 1 gone: read all


def test_a_full_sel_drops_its_oldest_records_and_says_it_overflowed(bmc, monkeypatch):
    monkeypatch.setattr(sel, "CAPACITY", 3)
    for _ in range(5):
        add(bmc, KERNEL_TEXT[0])
    assert [r.record_id for r in IpmiEventLog(LabBmcPower(bmc)).records_after(None)] == [3, 4, 5]
    assert raw_commands.answer(bmc, 0x0A, 0x40, b"")[1][-1] & 0x80


def test_firmware_raised_memory_error_is_logged_with_its_address(bmc, monkeypatch):
    monkeypatch.setitem(platform_errors.PATHS, "test", lambda machine, spec, addr, severity: None)
    spec = SimpleNamespace(name="m1", machine_dir=bmc.config.machine_dir)
    platform_errors.report_memory_error(object(), spec, 0x38830040, "test", "fatal")
    records = IpmiEventLog(LabBmcPower(bmc)).records_after(None)
    assert records[0].text == "Memory #0x01 | Uncorrectable ECC | Asserted"
    assert records[1].record_type == 0xC0 and records[1].raw.endswith((0x38830040).to_bytes(6, "little").hex())


def test_kcs_framing_escapes_and_checksums():
    message = bytes([0x01, 0xA0 << 0 & 0xFF, 0xAA, 0xA1])
    framed = kcs_link.frame(message)
    assert framed.endswith(b"\xa0") and b"\xaa\xb0" in framed and b"\xaa\xba" in framed
    assert kcs_link.Deframer().feed(b"\xff\x01\xa1" + framed[:3]) == []     # control command ignored
    deframer = kcs_link.Deframer()
    got = deframer.feed(framed[:2]) + deframer.feed(framed[2:])
    assert got == [message + bytes([kcs_link.checksum(message)])]


def wire(seq: int, netfn: int, cmd: int, data: bytes) -> bytes:
    body = bytes([seq, netfn << 2, cmd]) + data
    return kcs_link.frame(body)


def test_guest_kernel_panic_arrives_over_the_kcs_socket(bmc, tmp_path):
    link = kcs_link.KcsLink(bmc, tmp_path)
    link.start()
    try:
        with socket.socket(socket.AF_UNIX) as qemu:
            qemu.connect(str(tmp_path / "ipmi.sock"))
            qemu.sendall(b"\xff\x01\xa1\x08\x3f\xa1" + wire(1, 0x06, 0x01, b""))
            reply = kcs_link.Deframer().feed(qemu.recv(100))[0]
            assert reply[:4] == bytes([1, 0x07 << 2, 0x01, 0]) and reply[4 + 5] & kcs_link.SEL_DEVICE
            requests = [wire(2, 0x04, 0x02, KERNEL_PANIC_EVENT)] + [wire(3 + i, 0x0A, 0x44, r)
                                                                     for i, r in enumerate(KERNEL_TEXT)]
            qemu.sendall(b"".join(requests))
            replies = []
            while len(replies) < 3:
                replies += kcs_link.Deframer().feed(qemu.recv(100))
            assert [r[3] for r in replies] == [0, 0, 0]
            corrupt = bytearray(wire(9, 0x0A, 0x44, KERNEL_TEXT[0]))
            corrupt[-2] ^= 1                                  # checksum off: dropped, no reply
            qemu.sendall(bytes(corrupt) + wire(10, 0x0A, 0x77, b""))
            assert kcs_link.Deframer().feed(qemu.recv(100))[0][:4] == bytes([10, 0x0B << 2, 0x77, 0xC1])
    finally:
        link.stop()
    assert panic_text(IpmiEventLog(LabBmcPower(bmc)).records_after(None)) == "sysrq triggered crash"


def test_panic_text_is_reassembled_in_sequence_order_from_the_last_panic():
    chunks = [(0, "old panic")] + [(0, "Memory fail"), (2, ": unrecover"), (1, "ure: 0x2600"), (3, "able page")]
    records = [describe(struct.pack("<HBBB", i + 1, 0xF0, 0x20, seq) + text.encode().ljust(11, b"\0"))
               for i, (seq, text) in enumerate(chunks)]
    assert panic_text(records) == "Memory failure: 0x2600: unrecoverable page"


def test_judge_names_each_missing_record_and_blames_the_platform():
    records = (describe(bytes.fromhex("0100025ad30e6b41000320736fa17973")),)
    assert sel_window.judge(("os critical stop",), records) == []
    findings = sel_window.judge(("OS Critical Stop", "Memory"), records)
    assert len(findings) == 1 and "'Memory'" in findings[0] and findings[0].blame == FIRMWARE
    assert sel_window.judge((), None) == [] and sel_window.judge(("Memory",), None)[0].blame == FIRMWARE


PLAYBOOK = """version: 1
cases:
  - name: c1
    injector: hwpoison_inject
    target: kernel-rodata
    expect:
      outcome: panic
      sel: {sel}
"""


def test_playbook_sel_expectation_limits_the_case_to_hosts_with_a_sel(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PLAYBOOK.format(sel='["OS Critical Stop", "unrecoverable page"]'))
    case = load_playbook(path).cases[0]
    assert case.expect.sel == ("OS Critical Stop", "unrecoverable page") and "sel" in case.limits.features
    for bad, says in (('"OS Critical Stop"', "list"), ('[""]', "non-empty"), ("[3]", "string")):
        path.write_text(PLAYBOOK.format(sel=bad))
        with pytest.raises(ConfigError) as err:
            load_playbook(path)
        assert says in str(err.value) and f"{path}:" in str(err.value), str(err.value)


class FakeEventLog(EventLogProtocol):
    """A SEL holding one old record; the panic's records appear once the host was injected."""

    def __init__(self, host: FakeLabHost):
        self.host = host
        self.old = [describe(bytes.fromhex("0700025ad30e6b41000320736fa17973"))]
        self.panic = [describe(struct.pack("<HBBB", 8 + i, 0xF0, 0x20, i) + t.encode().ljust(11, b"\0"))
                      for i, t in enumerate(["Memory fail", "ure: 0x3883", "0: unrecove", "rable page"])]

    def last_record_id(self):
        return (self.old + (self.panic if self.host.injected else []))[-1].record_id

    def records_after(self, record_id):
        return tuple(r for r in self.old + (self.panic if self.host.injected else []) if r.record_id > record_id)


@pytest.mark.usefixtures("stub_kernel_seams")
@pytest.mark.parametrize("wanted, verdict", [(("unrecoverable page",), "pass"), (("Memory #0x01",), "error")])
def test_cycle_keeps_the_case_windows_records_and_checks_the_expected_ones(wanted, verdict):
    host = FakeLabHost()
    handles = host.handles()
    handles.event_log = FakeEventLog(host)
    case = make_case()
    case = type(case)(**{**case.__dict__, "expect": type(case.expect)(**{**case.expect.__dict__, "sel": wanted})})
    result = CaseCycle(handles, case).run().result
    assert result.verdict == verdict, result.reasons
    sel_evidence = [e.text for e in result.evidence if e.source == "sel"]
    assert len(sel_evidence) == 5 and not any(t.startswith("0x0007") for t in sel_evidence)   # not the case's
    assert [e.text for e in result.evidence if e.source == "sel-panic"] == ["Memory failure: 0x38830: unrecoverable page"]
    if verdict == "error":
        assert result.blame == FIRMWARE and "'Memory #0x01'" in result.reasons[0]


@pytest.mark.usefixtures("stub_kernel_seams")
def test_host_without_a_sel_is_not_read():
    host = FakeLabHost()
    result = CaseCycle(host.handles(), make_case()).run().result
    assert result.verdict == "pass" and not [e for e in result.evidence if e.source.startswith("sel")]


PYGHMI_EVENT_LOG = """
import json, sys
from pyghmi.ipmi.command import Command
cmd = Command(bmc='127.0.0.1', userid=sys.argv[2], password=sys.argv[3], port=int(sys.argv[1]))
print(json.dumps([{k: e.get(k) for k in ('component_type', 'event', 'severity')} for e in cmd.get_event_log()]))
"""


def test_clients_nobody_here_wrote_read_the_lab_bmcs_sel(tmp_path):
    """ipmitool (sel list, sel elist) and pyghmi's get_event_log against a served lab BMC,
    with the kernel's records added over the wire (ipmitool raw) as the guest would."""
    with stand_in_bmc_process(tmp_path) as port:
        for netfn, cmd, data in [(0x04, 0x02, KERNEL_PANIC_EVENT)] + [(0x0A, 0x44, r) for r in KERNEL_TEXT]:
            added = ipmitool(port, "raw", hex(netfn), hex(cmd), *(hex(b) for b in data))
            assert added.returncode == 0, added.stderr
        listed = ipmitool(port, "sel", "list")
        extended = ipmitool(port, "sel", "elist")
        events = subprocess.run([sys.executable, "-c", PYGHMI_EVENT_LOG, str(port), USER, PASSWORD],
                                capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "OS Critical Stop #0x73 | Run-time critical stop | Asserted" in listed.stdout
    assert "Linux kernel panic: sysrq trigg" in listed.stdout and "Linux kernel panic: ered crash" in listed.stdout
    assert extended.returncode == 0 and "OS Critical Stop" in extended.stdout, extended.stderr
    assert events.returncode == 0, events.stderr
    got = json.loads(events.stdout)
    assert got[0]["component_type"] == "OS Stop" and len(got) == 3, got


@pytest.mark.usefixtures("stub_kernel_seams")
def test_case_that_ends_in_error_after_the_injection_still_keeps_its_sel_records():
    host = FakeLabHost()
    host.writes_dump, host.behaviour = False, "hang"     # wedged, and no recovery brings a dump
    handles = host.handles()
    handles.event_log = FakeEventLog(host)
    result = CaseCycle(handles, make_case(deadlines=dict(make_case().deadlines, dump=1.0, wedge=0.5, nmi=0.5))
                       ).run().result
    assert result.verdict == "error", result.reasons
    assert "verified" not in [t.state for t in result.timings], [t.state for t in result.timings]
    assert [e.text for e in result.evidence if e.source == "sel-panic"] == ["Memory failure: 0x38830: unrecoverable page"]
