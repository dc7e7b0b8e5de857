"""ACPI APEI EINJ on a real host: the preflight that tells an operator what to fix, the write
sequence, and each refusal of the kernel or the firmware turned into a reason with its remedy.

Sources: kernel-facts.md §4, firmware-fleet-facts.md §2 (einj-core.c errnos, ras-tools'
einj_mem_uc preflight, real ``available_error_type`` listings). The injector classes that
use this are in injectors.py (``einj``: type 0x10, ``einj_fatal``: type 0x20).
"""

from __future__ import annotations

import re

from orchestrator.errors import FIRMWARE, LAB, ORCHESTRATOR, BlamedText

DEBUGFS = "/sys/kernel/debug"
EINJ_DIR = f"{DEBUGFS}/apei/einj"
TABLE = "/sys/firmware/acpi/tables/EINJ"
SECURITYFS = "/sys/kernel/security"
LOCKDOWN = f"{SECURITYFS}/lockdown"
#: param2: einj_error_inject() wants every PAGE_MASK bit set, so a 4K-granular mask passes on
#: 4K, 16K and 64K kernels alike (a coarser one, e.g. 2 MiB, fails with EINVAL).
MASK = 0xFFFFFFFFFFFFF000
FLAG_MEMORY_ADDRESS = 0x2           # param1/param2 valid
BIOS = "enable error injection (WHEA/EINJ) in the BIOS setup, then power-cycle the host"
SECURE_BOOT = ("Secure Boot lockdown: boot the host with Secure Boot off (or lockdown=none), "
               "or use hard_offline_page, which lockdown does not block")


class Unusable(BlamedText):
    """Why an injector cannot inject on this host, and whom to blame (errors.BLAMES)."""

    default_blame = LAB


def lockdown_probe() -> str:
    """sh printing ``lockdown=<the lockdown file>``; mounts securityfs where nobody did (a
    minimal init), since an unmounted securityfs hides an active lockdown."""
    return (f"[ -e {LOCKDOWN} ] || mount -t securityfs securityfs {SECURITYFS} 2>/dev/null; "
            f"echo \"lockdown=$(cat {LOCKDOWN} 2>/dev/null)\"")


def lockdown_reason(name: str, probe_output: str) -> Unusable | None:
    """Lockdown (integrity or confidentiality) refuses debugfs writes (LOCKDOWN_DEBUGFS)."""
    mode = re.search(r"\[(integrity|confidentiality)\]", probe_output)
    if mode is None:
        return None
    return Unusable(f"{name}: kernel lockdown ({mode[1]}) is active and blocks debugfs injection files: "
                    f"{SECURE_BOOT}")


def probe_command() -> str:
    """One sh command: table, lockdown, the einj files (loading einj.ko) and the offered types."""
    return "; ".join([
        f"[ -e {TABLE} ] && echo table", lockdown_probe(),
        f"grep -q ' {DEBUGFS} debugfs ' /proc/mounts || mount -t debugfs debugfs {DEBUGFS}",
        f"[ -e {EINJ_DIR}/error_inject ] || modprobe einj 2>&1 | sed 's/^/modprobe: /'",
        f"[ -e {EINJ_DIR}/error_inject ] && echo einj-dir",
        f"[ -w {EINJ_DIR}/notrigger ] && echo notrigger",
        f"echo types:; cat {EINJ_DIR}/available_error_type 2>/dev/null"])


def offered_types(listing: str) -> tuple[set[int], set[int]]:
    """(EINJ types, EINJv2 types) of an ``available_error_type`` listing
    (``0x%08x\\t<desc>`` lines, ``V2_0x%08x\\t<desc>`` for EINJv2)."""
    plain, v2 = set(), set()
    for line in listing.splitlines():
        m = re.match(r"\s*(V2_)?0x([0-9a-fA-F]+)\s", line + " ")
        if m:
            (v2 if m[1] else plain).add(int(m[2], 16))
    return plain, v2


def unusable(name: str, error_type: int, probe_output: str) -> Unusable | None:
    """The preflight's verdict on ``probe_command``'s output: None when ``error_type`` can
    be injected at an address with notrigger."""
    words = set(probe_output.split())
    if "table" not in words:
        return Unusable(f"{name}: no ACPI EINJ table ({TABLE} missing): the firmware offers no error "
                        f"injection; {BIOS}", FIRMWARE)
    locked = lockdown_reason(name, probe_output)
    if locked:
        return locked
    if "einj-dir" not in words:
        said = " ".join(line for line in probe_output.splitlines() if line.startswith("modprobe: "))
        return Unusable(f"{name}: {EINJ_DIR} missing although the EINJ table exists (einj.ko did not "
                        f"load{': ' + said if said else ''}); {BIOS}", FIRMWARE)
    if "notrigger" not in words:
        return Unusable(f"{name}: {EINJ_DIR}/notrigger missing: the EINJ table has no "
                        "SET_ERROR_TYPE_WITH_ADDRESS (ACPI 5) action, so no address can be given "
                        "(try `modprobe einj param_extension=1`, or a BIOS update)", FIRMWARE)
    plain, v2 = offered_types(probe_output.split("types:", 1)[-1])
    if error_type in plain:
        return None
    listed = ", ".join([f"{t:#x}" for t in sorted(plain)] + [f"V2_{t:#x}" for t in sorted(v2)]) or "none"
    v2_note = " (memory errors only as EINJv2, which needs per-component syndromes)" if 0x2 in v2 else ""
    return Unusable(f"{name}: the firmware does not offer error type {error_type:#x} (available_error_type: "
                    f"{listed}){v2_note}; {BIOS}", FIRMWARE)


def inject_command(error_type: int, phys_addr: int) -> str:
    """Each write names its file when it fails (sh prints only the errno text), so the
    refusal can be told apart: an EINVAL on error_type is not one on error_inject."""
    writes = [("error_type", f"{error_type:#x}"), ("param1", f"{phys_addr:#x}"), ("param2", f"{MASK:#x}"),
              ("flags", f"{FLAG_MEMORY_ADDRESS:#x}"), ("notrigger", "1"), ("error_inject", "1")]
    step = ('w() { echo "$2" > ' + EINJ_DIR + '/"$1" || { echo "einj: writing $2 to $1 failed" >&2; exit 1; }; }')
    return "; ".join([step, *(f"w {file} {value}" for file, value in writes)])


#: (failed file or None for any, errno text regex) -> (reason, blame); first match wins
_REFUSALS = [
    (None, "Operation not permitted", f"the kernel refused the write (EPERM): {SECURE_BOOT}", LAB),
    (None, "No such file|nonexistent directory", f"{EINJ_DIR} is gone (einj.ko unloaded, or no EINJ table); {BIOS}", FIRMWARE),
    ("error_type", "Invalid argument", f"the firmware does not offer this error type (EINVAL); {BIOS}", FIRMWARE),
    ("error_inject", "Device or resource busy",
     f"the firmware reported the injection failed (EBUSY: command status FAIL); {BIOS}", FIRMWARE),
    ("error_inject", "Input/output error",
     f"Firmware does not respond in time (EIO: busy for over 1 s); {BIOS}", FIRMWARE),
    ("error_inject", "Address already in use", "the kernel refused the zero page (EADDRINUSE)", ORCHESTRATOR),
    ("error_inject", "Invalid argument", "the kernel refused the request (EINVAL): the address is not System "
     "RAM, or the mask or flags are wrong", ORCHESTRATOR),
]


def refusal(name: str, exit_code: int, stderr: str) -> Unusable | None:
    """What an injection that exited non-zero was refused for; None if it was not refused."""
    if exit_code == 0:
        return None
    failed = re.search(r"einj: writing \S+ to (\w+) failed", stderr)
    file = failed[1] if failed else None
    for wanted, errno_text, reason, blame in _REFUSALS:
        if (wanted is None or wanted == file) and re.search(errno_text, stderr, re.IGNORECASE):
            return Unusable(f"{name}: writing {file or 'einj'}: {reason}", blame)
    said = " ".join(stderr.split())[:200]
    return Unusable(f"{name}: the injection exited {exit_code}: {said or 'no output'}", FIRMWARE)


def mask_passes(mask: int, page_size: int) -> bool:
    """einj_error_inject()'s check: ``(param2 & PAGE_MASK) == PAGE_MASK``."""
    page_mask = ((1 << 64) - 1) & ~(page_size - 1)
    return mask & page_mask == page_mask
