"""arm64 firmware-first memory errors raised by the lab's platform firmware (GHES, QEMU 11).

What a RAS platform's firmware does for an uncorrected (or corrected) DRAM error: it writes a
CPER record into the Generic Hardware Error Source's status block and notifies the OS, which
reads it in ghes_proc(). QEMU >= 10.2 takes the record whole through QMP
``inject-ghes-v2-error`` (base64; the QMP source is signalled through the GED's GPIO, so the
kernel handles it in a workqueue). The record (ACPI 6.5 §18.3.2.7.1, UEFI 2.10 N.2.2, N.2.5;
the kernel's struct acpi_hest_generic_status, acpi_hest_generic_data_v300 and
cper_sec_mem_err) is 172 bytes:

    Generic Error Status Block   20 B: block status, raw data offset/length, data length, severity
    Generic Error Data Entry     72 B: platform-memory section GUID, severity, revision 0x300, ...
    Memory error section         80 B: validation bits, physical address and mask, error type

Only RAS machines (MachineSpec.ras_qemu) have it; sol-and-ghes.md Part B, arm64-ras-lab.md.
"""

from __future__ import annotations

import base64
import struct
import uuid

from orchestrator.errors import UnsupportedOperation
from orchestrator.vlab.qemu.platform_errors import PATHS
from orchestrator.vlab.qemu.qmp import QmpError

#: CPER error severity (UEFI N.2.1): the kernel's GHES_SEV_* follow from it
SEVERITY = {"recoverable": 0, "fatal": 1, "corrected": 2}
PLATFORM_MEMORY = uuid.UUID("a5bc1114-6f64-4ede-b863-3e83ed7c83b1")
GDATA_REVISION = 0x300
#: cper_sec_mem_err.validation_bits: PA | PA_MASK | ERROR_TYPE
MEM_VALID = 0x2 | 0x4 | 0x4000
MULTI_BIT_ECC = 3
PAGE_MASK = 0xfffffffffffff000

_STATUS = struct.Struct("<5I")          # block_status, raw_data_offset, raw_data_length, data_length, severity
_GDATA = struct.Struct("<16sIHBBI16s20sQ")   # section_type ... fru_text, time_stamp (v3)
_MEMORY = struct.Struct("<QQQQ8H3QBBHHH")   # validation ... error_type, extended, rank, handles


def memory_section(phys_addr: int) -> bytes:
    return _MEMORY.pack(MEM_VALID, 0, phys_addr, PAGE_MASK, *([0] * 8), 0, 0, 0, MULTI_BIT_ECC, 0, 0, 0, 0)


def cper_record(phys_addr: int, severity: str) -> bytes:
    """The whole record for one memory error at ``phys_addr``."""
    sev = SEVERITY[severity]
    section = memory_section(phys_addr)
    entry = _GDATA.pack(PLATFORM_MEMORY.bytes_le, sev, GDATA_REVISION, 0, 0, len(section),
                        bytes(16), bytes(20), 0) + section
    # block status: (un)correctable error valid, and one data entry (bits 4..13)
    block_status = (0x2 if severity == "corrected" else 0x1) | 1 << 4
    return _STATUS.pack(block_status, 0, 0, len(entry), sev) + entry


def raise_ghes_error(machine, spec, phys_addr: int, severity: str) -> None:
    if getattr(spec, "ras_qemu", None) is None:
        raise UnsupportedOperation(f"no firmware-first (GHES) injection on lab machine {spec.name}: "
                                   f"it runs the system QEMU, without a RAS platform")
    if severity not in SEVERITY:
        raise UnsupportedOperation(f"GHES severity {severity!r} (known: {', '.join(SEVERITY)})")
    cper = base64.b64encode(cper_record(phys_addr, severity)).decode()
    try:
        machine.qmp("inject-ghes-v2-error", cper=cper)
    except QmpError as error:   # e.g. the OS has not acknowledged the previous record yet
        raise UnsupportedOperation(f"QEMU refused the GHES record on {spec.name}: {error.desc}") from error


PATHS["ghes"] = raise_ghes_error
