"""Kernel log line parsing, on lines copied from the lab captures and the v4 thread."""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest

from orchestrator.kernel.signatures import (MF_LINE, PANIC_LINE, KernelEvent, clean_line, find_panic,
                                            frame_function, parse_line, parse_text, split_boots)

LOGS = Path(__file__).parent / "fixtures" / "logs"
ESC = "\x1b"


@pytest.mark.parametrize("line, kind, fields", [
    (f"/ # {ESC}[6n[    8.802561] Injecting memory failure at pfn 0x40210", "inject", {"pfn": 0x40210, "ts": 8.802561}),
    ("[   93.656118] Memory failure: 0x38830: unhandlable page.", "unhandlable", {"pfn": 0x38830}),
    ("[   93.656139] Memory failure: 0x38830: recovery action for reserved kernel page: Ignored", "action",
     {"pfn": 0x38830, "label": "reserved kernel page", "result": "Ignored"}),
    ("[   76.077868] Memory failure: 0x2000: recovery action for get hwpoison page: Ignored", "action",
     {"label": "get hwpoison page", "result": "Ignored"}),
    ("[   67.084154] Memory failure: 0x10000: recovery action for free buddy page: Recovered", "action",
     {"label": "free buddy page", "result": "Recovered"}),
    ("[    0.985471] Memory failure: 0x13c40: recovery action for non struct page pfn: Ignored", "action",
     {"label": "non struct page pfn", "result": "Ignored"}),
    ("[    1.000000] Memory failure: 0x7: recovery action for some page class of 2030: Delayed", "action",
     {"label": "some page class of 2030", "result": "Delayed"}),
    ("[    1.000000] Memory failure: 0: recovery action for unknown page: Ignored", "action", {"pfn": 0}),
    ("[    1.000000] Memory failure: 0x2: recovery action for already poisoned page: Failed", "already_poisoned",
     {"pfn": 2, "result": "Failed"}),
    ("[    1.000000] Memory failure: 0x2: already hardware poisoned", "already_poisoned", {"pfn": 2}),
    ("[    1.000000] Memory failure: 0x3a: memory outside kernel control", "mf_other",
     {"pfn": 0x3a, "message": "memory outside kernel control"}),
    ("[   93.657011] Kernel panic - not syncing: Memory failure: 0x38830: unrecoverable page", "panic_mf",
     {"pfn": 0x38830, "message": "Memory failure: 0x38830: unrecoverable page"}),
    ("[   13.112614] Kernel panic - not syncing: Memory failure on page 2", "panic_legacy", {"pfn": 2}),
    ("[   19.004498] Kernel panic - not syncing: Memory failure on page 40230", "panic_legacy", {"pfn": 0x40230}),
    ("[   41.552388] Kernel panic - not syncing: sysrq triggered crash", "panic_other",
     {"message": "sysrq triggered crash"}),
    ("[    5.988039] Kernel panic - not syncing: GHES: Fatal hardware error", "panic_other",
     {"message": "GHES: Fatal hardware error"}),
    ("[   55.282806] ---[ end Kernel panic - not syncing: Memory failure: 0x1be10: unrecoverable page ]---",
     "panic_end", {"message": "Memory failure: 0x1be10: unrecoverable page"}),
    ("[88690.479424] [ T593001] {1}[Hardware Error]: physical_address: 0x00000040272d5080", "hw_error",
     {"address": 0x40272D5080, "pfn": None}),
    ("[   21.094355] mce: [Hardware Error]: TSC 1aa4d521a12 ADDR 38040000 MISC 8c", "hw_error", {"address": 0x38040000}),
    ("[   81.414467] mce: [Hardware Error]: Machine check events logged", "hw_error", {"address": None}),
    ("[   12.534555] mce: Uncorrected hardware memory error in user-access at 1ca60000", "hw_error",
     {"address": 0x1CA60000}),
    ("[   43.224655] mce: [Hardware Error]: Machine check: In kernel and no restart IP", "mce_panic",
     {"message": "In kernel and no restart IP"}),
    ("[    5.987837] GHES: Fatal hardware error but panic disabled", "ghes_fatal", {}),
    ("[88757.847126] [ T640437] Internal error: synchronous external abort: 0000000096000410 [#1] SMP", "oops", {}),
    ("[ 5120.331002] BUG: kernel NULL pointer dereference, address: 0000000000000008", "oops", {"address": 8}),
    ("[    9.000000] Oops: general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] SMP",
     "oops", {}),
    ("[    9.000000] kernel BUG at mm/slub.c:412!", "oops", {}),
    ("[    9.000000] Unable to handle kernel paging request at virtual address ffff800082a3c000", "oops",
     {"address": 0xFFFF800082A3C000}),
    ("[    9.000000] BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:123]", "bug", {}),
    ("[88758.061075] [ T640437] pc : d_lookup+0x5c/0x220", "pc", {"label": "d_lookup"}),
    ("[ 5120.331660] RIP: 0010:nvme_pci_update_nr_queues+0x2e/0x1a0 [nvme]", "rip", {"label": "nvme_pci_update_nr_queues"}),
    ("[   93.659598]  hwpoison_inject.cold+0x1c/0x59 [hwpoison_inject]", "frame", {"label": "hwpoison_inject"}),
    ("[   18.175153]  show_stack+0x20/0x40 (C)", "frame", {"label": "show_stack"}),
    ("[   93.658516] Call Trace:", "call_trace", {}),
    ("[   18.175918] Call trace:", "call_trace", {}),
    ("[   41.552301] sysrq: Trigger a crash", "sysrq", {"message": "Trigger a crash"}),
    ("[   18.183852] Starting crashdump kernel...", "crash_kernel", {}),
    ("[    0.000000] Linux version 7.3.4+deb13-cloud-arm64 (debian-kernel@lists.debian.org) #1 SMP", "linux_version",
     {"label": "7.3.4+deb13-cloud-arm64"}),
    ("[    0.000000] OF: fdt: Reserving 1 KiB of memory at 0x7bbff000 for elfcorehdr", "crash_boot", {}),
    ("[   10.000000] EDAC MC0: 1 UE multi-bit ECC on unknown memory (page:0x40272d offset:0x5080 grain:4096)", "hw_error",
     {"address": 0x40272D5080}),
])
def test_parse_line_kinds_and_fields(line, kind, fields):
    event = parse_line(line)
    assert event is not None and event.kind == kind, event
    for name, value in fields.items():
        assert getattr(event, name) == value, (name, event)


@pytest.mark.parametrize("line", [
    "[   10.100000] traps: a.out[12] general protection fault ip:401136 sp:7ffd error:0 in a.out[401000+1000]",
    "[   93.659526]  ? _printk+0x6b/0x90",         # unreliable x86 frame: stale stack data
    "[    2.812391] EXT4-fs (vda): mounted filesystem r/w with ordered data mode.",
    "VLAB: crash kernel up, uptime=2.15",
    "",
])
def test_lines_that_matter_to_no_one(line):
    assert parse_line(line) is None


@pytest.mark.parametrize("line, ts", [
    ("[   93.655960] Injecting memory failure at pfn 0x38830", 93.655960),
    ("[   93.655960] [T439] Injecting memory failure at pfn 0x38830", 93.655960),
    ("[   93.655960] [    C1] Injecting memory failure at pfn 0x38830", 93.655960),
    ("<6>[   93.655960] Injecting memory failure at pfn 0x38830", 93.655960),
    ("[Wed Nov 25 17:37:22 2026] Injecting memory failure at pfn 0x38830",
     calendar.timegm((2026, 11, 25, 17, 37, 22, 0, 0, 0))),
    ("2026-11-25T17:37:22.250000+0000 host1 kernel: Injecting memory failure at pfn 0x38830",
     calendar.timegm((2026, 11, 25, 17, 37, 22, 0, 0, 0)) + 0.25),
    ("Nov 25 17:37:22 host1 kernel: Injecting memory failure at pfn 0x38830",
     calendar.timegm((2000, 11, 25, 17, 37, 22, 0, 0, 0))),
    ("Feb 29 01:00:00 host1 kernel: Injecting memory failure at pfn 0x38830",
     calendar.timegm((2000, 2, 29, 1, 0, 0, 0, 0, 0))),
    ("[   93.655960] host1 kernel: Injecting memory failure at pfn 0x38830", 93.655960),  # journalctl short-monotonic
    ("Injecting memory failure at pfn 0x38830", None),
])
def test_prefix_formats_give_timestamp_and_pfn(line, ts):
    event = parse_line(line)
    assert event.kind == "inject" and event.pfn == 0x38830
    assert event.ts == pytest.approx(ts) if ts is not None else event.ts is None


def test_clean_line_strips_prompt_escape_and_control_characters():
    raw = f"/ # {ESC}[6n[   13.112268] Memory failure: 0x9850: unhandlable page.\r"
    assert clean_line(raw) == "[   13.112268] Memory failure: 0x9850: unhandlable page."
    assert clean_line("[ 1.0] Kernel\x00 panic\x07") == "[ 1.0] Kernel panic"
    # a journal header before the stamp is not a prompt
    assert clean_line("host kernel: [ 1.0] x").startswith("host kernel:")


def test_watcher_regexes_match_substrings_after_any_prefix():
    line = f"/ # {ESC}[6n[   8.815338] Kernel panic - not syncing: Memory failure: 0x40210: unrecoverable page\r"
    assert PANIC_LINE.search(line)["message"] == "Memory failure: 0x40210: unrecoverable page"
    m = MF_LINE.search("[  T170] Memory failure: 0x42c00: recovery action for reserved kernel page: Ignored")
    assert m["pfn"] == "0x42c00" and m["rest"].endswith("Ignored")
    assert MF_LINE.search("Memory failure on page 2") is None  # the legacy panic names no %#lx pfn


def test_find_panic_skips_the_end_banner_and_other_events():
    events = parse_text("[1.0] Memory failure: 0x1: unhandlable page.\n"
                        "[1.1] ---[ end Kernel panic - not syncing: Fatal exception ]---\n"
                        "[1.2] Kernel panic - not syncing: Memory failure: 0x1: unrecoverable page\n")
    assert find_panic(events).kind == "panic_mf"
    assert find_panic(events[:2]) is None


def test_parse_text_arm64_console_signature_sequence():
    events = parse_text((LOGS / "arm64-failfast-slab.console.log").read_text())
    kinds = [e.kind for e in events if e.kind in ("unhandlable", "action", "panic_mf")]
    assert kinds[:3] == ["unhandlable", "action", "panic_mf"]
    assert {e.pfn for e in events if e.kind in ("unhandlable", "action", "panic_mf")} == {0x42C00}


def test_split_boots_at_crash_kernel_and_banners():
    boots = split_boots((LOGS / "arm64-failfast-slab.console.log").read_text().splitlines())
    assert len(boots) == 2
    assert boots[0][-1].kind == "crash_kernel" and find_panic(boots[0]).pfn == 0x42C00
    assert boots[1][0].kind == "linux_version" and any(e.kind == "crash_boot" for e in boots[1])

    boots = split_boots(parse_text((LOGS / "x86-mce-fatal-then-crash-kernel-relog.console.log").read_text()))
    assert len(boots) == 2
    relog = [e for e in boots[1] if e.kind == "action"]
    assert [e.pfn for e in relog] == [0x13C40]  # the re-logged MCE sits in the crash kernel's boot


def test_frame_function_fast_path():
    assert frame_function("[ 1.0] [ T640437] d_lookup+0x5c/0x220 (P)") == "d_lookup"
    assert frame_function("[ 1.0]  simple_attr_write_xsigned.isra.0+0xd9/0x140") == "simple_attr_write_xsigned"
    assert frame_function("[ 1.0]  ? _printk+0x6b/0x90") == ""
    assert frame_function("[ 1.0] RIP: 0010:pv_native_safe_halt+0xf/0x20") is None
    assert frame_function("[ 1.0]  <TASK>") is None


def test_events_are_frozen():
    event = parse_line("[1.0] Memory failure: 0x1: unhandlable page.")
    assert isinstance(event, KernelEvent)
    with pytest.raises(AttributeError):
        event.pfn = 2
