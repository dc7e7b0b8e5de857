"""x86 machine checks raised by the lab's platform firmware (QEMU's HMP ``mce``).

What a real platform raises for an uncorrected memory error found by the scrubber or by an
EINJ request (virtual-lab-notes.md, einj-lab-firmware.md): bank 9, MCG_STATUS 0x5
(RIPV|MCIP: the interrupted context can restart), MISC 0x86 (physical address, LSB 6),
broadcast to every vCPU (``-b``) as Intel's LMCE-less machines do. MCG_STATUS 0 would make
the kernel call even the action-optional error fatal.
"""

from __future__ import annotations

from orchestrator.errors import UnsupportedOperation
from orchestrator.vlab.qemu.platform_errors import PATHS

#: MCi_STATUS per severity: VAL|UC|EN|MISCV|ADDRV|S + MCACOD 0xC0 (memory scrub) — action
#: optional (SRAO); the same with PCC set: processor context corrupt, the kernel panics.
STATUS = {"srao": 0xbd000000000000c0, "fatal": 0xbe000000000000c0}
BANK, MCG_STATUS, MISC = 9, 0x5, 0x86


def hmp_command(phys_addr: int, severity: str) -> str:
    return f"mce -b 0 {BANK} {STATUS[severity]:#x} {MCG_STATUS:#x} {phys_addr:#x} {MISC:#x}"


def raise_machine_check(machine, spec, phys_addr: int, severity: str) -> None:
    if spec.arch != "x86_64":
        raise UnsupportedOperation(f"no machine checks on {spec.arch} lab machine {spec.name}")
    reply = machine.qmp("human-monitor-command", **{"command-line": hmp_command(phys_addr, severity)})
    if reply:   # HMP answers "" on success, an error text otherwise
        raise UnsupportedOperation(f"QEMU refused the machine check on {spec.name}: {str(reply).strip()}")


PATHS["mce"] = raise_machine_check
