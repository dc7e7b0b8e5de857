"""End to end on the virtual lab: the BMC's System Event Log. A panicking case leaves the
kernel's "OS Critical Stop" event and its panic text in the SEL (sent in band by the guest's
ipmi_msghandler over QEMU's KCS interface), the case result keeps them as evidence, a
firmware-raised memory error leaves its Memory record, and ipmitool (a BMC client nobody
here wrote) shows them. One machine on the generic kernel (the cloud one has no IPMI drivers)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.transports.ipmi import IpmiPower
from orchestrator.transports.ipmi_firmware import IpmiFirmware
from orchestrator.transports.ipmi_sel import IpmiEventLog
from vlabs import private_lab
from test_e2e_orchestrator import run_playbook

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64]
PANIC_TEXT = re.compile(r"^Memory failure: (0x[0-9a-f]+|0): unrecoverable page$")
#: a kernel page (the kernel image is loaded at 16 MiB): with the sysctl at its default 0 the
#: kernel logs "reserved kernel page: Ignored" and keeps running
KERNEL_ADDRESS = 0x1000000
#: the target is 0.2 s per case; measured 0.003-0.007 s, and 0.165 s once (the read after a
#: case whose BMC session had to log in again) on the loaded 2-core host: the bound leaves
#: room for that load, not for a slower reader
SEL_READ_BOUND_S = 0.5


@pytest.fixture(scope="module")
def sel_lab(tmp_path_factory):
    yield from private_lab(tmp_path_factory, arch="x86_64", kernels=("generic",))


def bmc_of(inventory: Path):
    return load_inventory(inventory).hosts[0].bmc


def test_panic_cases_keep_their_sel_records_as_evidence(sel_lab, tmp_path):
    code, run, _ = run_playbook(sel_lab, "tests/playbooks/sel.yaml", tmp_path)
    cases = {c.case: c for c in run.cases}
    assert code == 0 and [c.verdict for c in cases.values()] == ["pass", "pass"], [c.reasons for c in run.cases]
    for case in cases.values():
        sel = [e.text for e in case.evidence if e.source == "sel"]
        assert any("OS Critical Stop #0x4d" in t for t in sel), sel      # 'M' of "Memory failure"
        panic = [e.text for e in case.evidence if e.source == "sel-panic"]
        assert len(panic) == 1 and PANIC_TEXT.match(panic[0]), panic
        assert int(PANIC_TEXT.match(panic[0])[1], 16) == case.pfn
        read_s = float(re.search(r"read in ([0-9.]+) s", sel[-1])[1])
        print(f"{case.case}: SEL read after the case: {sel[-1]}")
        assert read_s < SEL_READ_BOUND_S, sel[-1]
    software = [e.text for e in cases["rodata-panic-in-the-sel"].evidence if e.source == "sel"]
    assert not any("Memory #" in t for t in software), "no firmware record for a software injection"
    einj = cases["rodata-einj-panic-in-the-sel"]
    oem = [e.text for e in einj.evidence if e.source == "sel" and "OEM record 0xc0" in e.text]
    assert len(oem) == 1 and int.from_bytes(bytes.fromhex(oem[0].split()[-1]), "little") >> 12 == einj.pfn, oem


def test_firmware_memory_error_is_in_the_sel_and_ipmitool_lists_it(sel_lab):
    bmc = bmc_of(sel_lab)
    power = IpmiPower(bmc)
    try:
        events = IpmiEventLog(power)
        before = events.last_record_id()
        IpmiFirmware(power).report_memory_error(KERNEL_ADDRESS, path="mce", severity="srao")
        started = time.monotonic()
        records = events.records_after(before)
        read_s = time.monotonic() - started
    finally:
        power.close()
    assert [r.text for r in records][:1] == ["Memory #0x01 | Uncorrectable ECC | Asserted"], records
    assert records[1].raw.endswith(KERNEL_ADDRESS.to_bytes(6, "little").hex())
    print(f"SEL read of the firmware's records: {len(records)} in {read_s:.3f} s")
    assert read_s < SEL_READ_BOUND_S, f"a case's SEL read took {read_s:.3f} s"
    listed = subprocess.run(["ipmitool", "-I", "lanplus", "-H", bmc.address, "-p", str(bmc.port),
                             "-U", bmc.user, "-f", str(bmc.password.file), "sel", "list"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout
    assert "OS Critical Stop #0x4d" in text and "Memory #0x01" in text and "Uncorrectable ECC" in text, text
    chunks = re.findall(r"Linux kernel panic: (.*)$", text, re.M)
    assert "unrecoverable page" in "".join(chunks), text
