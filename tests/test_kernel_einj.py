"""The EINJ injectors (kernel/einj.py): preflight on real ``available_error_type`` listings
(firmware-fleet-facts.md §2), the write sequence run by a real sh against a stand-in debugfs,
and each refusal turned into a reason that names the remedy and whom to blame."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import FIRMWARE, LAB, ORCHESTRATOR
from orchestrator.kernel import einj
from orchestrator.kernel.injectors import injector
from orchestrator.kernel.pages import Target
from orchestrator.protocols.shell import CommandResult
from test_kernel_shells import FakeShell, LocalShell

XEON_GOLD_6230 = ("0x00000008\tMemory Correctable\n0x00000010\tMemory Uncorrectable non-fatal\n"
                  "0x00000020\tMemory Uncorrectable fatal\n0x00000040\tPCI Express Correctable\n"
                  "0x00000080\tPCI Express Uncorrectable non-fatal\n0x00000100\tPCI Express Uncorrectable fatal\n")
OTHER_INTEL = "0x00000008\tMemory Correctable\n0x00000010\tMemory Uncorrectable non-fatal\n" \
              "0x00000020\tMemory Uncorrectable fatal\n"
HYGON = "0x00000001\tProcessor Correctable\n0x00000002\tProcessor Uncorrectable non-fatal\n" \
        "0x00000004\tProcessor Uncorrectable fatal\n"
EINJV2_ONLY = "0x00000001\tProcessor Correctable\nV2_0x00000001\tEINJV2 Processor Error\n" \
              "V2_0x00000002\tEINJV2 Memory Error\nV2_0x00000004\tEINJV2 PCI Express Error\n"
EINJV2_AND_V1 = OTHER_INTEL + "V2_0x00000002\tEINJV2 Memory Error\n"
HEALTHY = "table\nlockdown=[none] integrity confidentiality\neinj-dir\nnotrigger\ntypes:\n"
RODATA = Target("kernel-rodata", 0x38810, 0x38810000, 1 << 32, 0, "test", None)


def verdict(name: str, probe_output: str):
    return injector(name).unavailable_reason(FakeShell([(r"available_error_type", probe_output)]), arch="x86_64")


def test_offered_types_parse_einj_and_einjv2_lines():
    assert einj.offered_types(XEON_GOLD_6230) == ({0x8, 0x10, 0x20, 0x40, 0x80, 0x100}, set())
    assert einj.offered_types(EINJV2_AND_V1) == ({0x8, 0x10, 0x20}, {0x2})


@pytest.mark.parametrize("listing", [XEON_GOLD_6230, OTHER_INTEL, EINJV2_AND_V1])
@pytest.mark.parametrize("name", ["einj", "einj_fatal"])
def test_intel_listings_offer_both_memory_types(name, listing):
    assert verdict(name, HEALTHY + listing) is None


def test_processor_only_firmware_is_refused_naming_what_it_offers_and_the_bios_fix():
    reason = verdict("einj", HEALTHY + HYGON)
    assert "does not offer error type 0x10" in reason and "0x1, 0x2, 0x4" in reason
    assert "BIOS setup" in reason and reason.blame == FIRMWARE


def test_einjv2_only_memory_errors_are_named_as_such():
    reason = verdict("einj_fatal", HEALTHY + EINJV2_ONLY)
    assert "0x20" in reason and "V2_0x2" in reason and "EINJv2" in reason


@pytest.mark.parametrize("probe,fragment,blame", [
    ("lockdown=\n", "no ACPI EINJ table", FIRMWARE),
    ("table\nlockdown=none [integrity] confidentiality\neinj-dir\nnotrigger\ntypes:\n" + OTHER_INTEL,
     "Secure Boot lockdown", LAB),
    ("table\nlockdown=\nmodprobe: modprobe: FATAL: Module einj not found\ntypes:\n", "Module einj not found", FIRMWARE),
    ("table\nlockdown=\neinj-dir\ntypes:\n" + OTHER_INTEL, "SET_ERROR_TYPE_WITH_ADDRESS", FIRMWARE),
])
def test_preflight_refusals_name_the_remedy_and_the_blame(probe, fragment, blame):
    reason = verdict("einj", probe)
    assert fragment in reason and reason.blame == blame
    if blame == FIRMWARE:
        assert "BIOS" in reason


def test_probe_loads_einj_and_mounts_what_a_minimal_init_leaves_unmounted():
    probe = einj.probe_command()
    assert "modprobe einj" in probe and "mount -t debugfs" in probe and "mount -t securityfs" in probe
    assert probe.index("[ -e /sys/firmware/acpi/tables/EINJ ]") < probe.index("modprobe einj")


@pytest.mark.parametrize("name,error_type", [("einj", "0x10"), ("einj_fatal", "0x20")])
def test_command_writes_type_address_mask_flags_notrigger_then_injects(name, error_type, tmp_path):
    root = tmp_path / "sys"
    folder = root / "kernel/debug/apei/einj"
    folder.mkdir(parents=True)
    LocalShell().run(injector(name).command(RODATA).replace("/sys/", f"{root}/"), timeout=10)
    wrote = {p.name: p.read_text().strip() for p in folder.iterdir()}
    assert wrote == {"error_type": error_type, "param1": "0x38810000", "param2": "0xfffffffffffff000",
                     "flags": "0x2", "notrigger": "1", "error_inject": "1"}


def test_a_failed_write_names_its_file_and_stops_before_injecting(tmp_path):
    root = tmp_path / "sys"
    folder = root / "kernel/debug/apei/einj"
    (folder / "param2").mkdir(parents=True)        # writing it fails, as a refused write does
    done = LocalShell().run(injector("einj").command(RODATA).replace("/sys/", f"{root}/"), timeout=10, check=False)
    assert done.exit_code == 1 and "einj: writing 0xfffffffffffff000 to param2 failed" in done.stderr
    assert not (folder / "error_inject").exists()


@pytest.mark.parametrize("page_size", [4096, 16384, 65536])
def test_the_mask_passes_the_kernels_check_on_every_page_size(page_size):
    assert einj.mask_passes(einj.MASK, page_size)
    assert not einj.mask_passes(0xFFFFFFFFFFE00000, page_size)     # a 2 MiB mask: EINVAL


def refused(name: str, file: str, errno_text: str):
    stderr = f"sh: write error: {errno_text}\neinj: writing 1 to {file} failed\n"
    return injector(name).refusal(CommandResult("(detached)", 1, "", stderr, 0.0))


@pytest.mark.parametrize("file,errno_text,fragments,blame", [
    ("error_type", "Invalid argument", ("does not offer this error type", "BIOS setup"), FIRMWARE),
    ("error_inject", "Device or resource busy", ("EBUSY", "BIOS setup"), FIRMWARE),
    ("error_inject", "Input/output error", ("Firmware does not respond", "BIOS setup"), FIRMWARE),
    ("error_inject", "Invalid argument", ("EINVAL", "System RAM"), ORCHESTRATOR),
    ("error_inject", "Address already in use", ("zero page",), ORCHESTRATOR),
    ("error_type", "Operation not permitted", ("EPERM", "Secure Boot lockdown"), LAB),
    ("error_type", "nonexistent directory", ("einj", "BIOS setup"), FIRMWARE),
])
def test_each_kernel_refusal_becomes_a_reason_with_its_remedy(file, errno_text, fragments, blame):
    reason = refused("einj", file, errno_text)
    assert all(f in reason for f in fragments), reason
    assert reason.blame == blame and f"writing {file}" in reason


def test_an_injection_that_returned_zero_was_not_refused():
    assert injector("einj").refusal(CommandResult("(detached)", 0, "", "", 0.0)) is None


def test_hwpoison_under_lockdown_is_refused_but_its_ebusy_is_the_kernels_answer():
    hwpoison = injector("hwpoison_inject")
    eperm = CommandResult("(detached)", 1, "", "sh: can't create /sys/kernel/debug/hwpoison/corrupt-pfn: "
                                                "Operation not permitted\n", 0.0)
    assert "Secure Boot lockdown" in hwpoison.refusal(eperm)
    ebusy = CommandResult("(detached)", 1, "", "sh: write error: Device or resource busy\n", 0.0)
    assert hwpoison.refusal(ebusy) is None
    assert injector("hard_offline_page").refusal(eperm) is None


def test_einj_fatal_is_its_own_injector_of_the_einj_feature():
    fatal = injector("einj_fatal")
    assert (fatal.feature, fatal.module, fatal.error_type, fatal.reports_late) == ("einj", "einj", 0x20, True)
    assert Path(fatal.needs).name == "error_inject"
