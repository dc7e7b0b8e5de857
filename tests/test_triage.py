"""Crash triage on logs written from the kernel's real formats (tests/fixtures/logs)."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from orchestrator.faces.cli.triage import add_triage_command
from orchestrator.triage.pipeline import classify, triage_file, triage_paths, triage_stream

ROOT = Path(__file__).resolve().parents[1]
LOGS = Path(__file__).parent / "fixtures" / "logs"
RHEL = LOGS / "kdump-rhel" / "127.0.0.1-2026-11-25-17:37:22" / "vmcore-dmesg.txt"


def crashes_of(name: str | Path):
    path = Path(name) if isinstance(name, Path) else LOGS / name
    return classify(path.read_text(), source=str(path))


@pytest.mark.parametrize("name, bucket, pfn", [
    ("x86-failfast-corrupt-pfn.console.log", "mf-fail-fast", 0x38830),
    ("arm64-failfast-slab.console.log", "mf-fail-fast", 0x42C00),
    (RHEL, "mf-fail-fast", 0x1BE10),
    ("dmesg.202611251737", "mf-legacy", 0x40230),
    ("arm64-sea-consumed.vmcore-dmesg.txt", "hw-error-consumed-later", 0x40272D),
    ("x86-mce-consumed-same-page.console.log", "hw-error-consumed-later", 0x38040),
    ("x86-dmesg-T-consumed.log", "hw-error-consumed-later", 0x2F3A41),
    ("arm64-ghes-fatal.dmesg.202611251806", "firmware-fatal", None),
    ("x86-mce-fatal-then-crash-kernel-relog.console.log", "firmware-fatal", None),
    ("x86-mce-other-page.console.log", "firmware-fatal", None),
    ("x86-null-deref-oops.log", "software", None),
])
def test_one_crash_per_log_in_its_bucket(name, bucket, pfn):
    crashes = crashes_of(name)
    assert [(c.bucket, c.pfn) for c in crashes] == [(bucket, pfn)]


def test_v4_production_example_is_consumed_later_after_67_seconds():
    crash, = crashes_of("arm64-sea-consumed.vmcore-dmesg.txt")
    assert crash.delay_s == pytest.approx(67.35, abs=0.01)  # unhandlable 88690.498473 -> SEA 88757.847126
    assert crash.address_in_page == "unknown"               # an SEA prints no physical address
    assert crash.panic == "synchronous external abort: Fatal exception"
    assert crash.frames[0] == "d_lookup"
    assert any("pc : d_lookup" in line for line in crash.evidence)
    assert any("get hwpoison page: Ignored" in line for line in crash.evidence)
    assert "get hwpoison page" in crash.signature and "d_lookup" in crash.signature


def test_machine_check_on_the_ignored_page_is_consumed_later_and_elsewhere_is_not():
    same, = crashes_of("x86-mce-consumed-same-page.console.log")
    assert same.address_in_page == "yes" and same.address == 0x38040080
    assert same.delay_s == pytest.approx(43.224655 - 21.094019, abs=1e-3)
    other, = crashes_of("x86-mce-other-page.console.log")
    assert other.bucket == "firmware-fatal" and other.address == 0x38050080


def _untimed_sea_after_another_page(*, recovered: bool) -> str:
    """The v4 production crash as a console without timestamps (printk.time=0), 67 s of other
    kernel lines after the Ignored page, then firmware reporting ANOTHER page just before the
    SEA: memory_failure() recovered that page (recovered=True), or the report is the SEA's own."""
    text = (LOGS / "arm64-sea-consumed.vmcore-dmesg.txt").read_text()
    text = re.sub(r"^\[ *\d+\.\d+\] \[ *[TC] *\d+\] ", "", text, flags=re.M)
    chatter = "".join(f"mlx5_core 0000:0{i % 4}:00.0 eth{i % 4}: Link up, 100000 Mbps full duplex, "
                      "Flow control: ON, hw offload: tx-checksum rx-checksum tso gro lro\n" for i in range(40))
    other = "\n".join(f"{{2}}[Hardware Error]: {line}" for line in (
        "Hardware error from APEI Generic Hardware Error Source: 784", "event severity: recoverable",
        "Error 0, type: recoverable", "section_type: memory error", "physical_address: 0x0000004130be2040",
        "physical_address_mask: 0xfffffffffffff000", "error_type: 3, multi-bit ECC")) + "\n"
    if recovered:
        other += "Memory failure: 0x4130be: recovery action for free buddy page: Recovered\n"
    return text.replace("Internal error: synchronous", chatter + other + "Internal error: synchronous", 1)


def test_recovered_report_of_another_page_does_not_hide_the_earlier_ignored_page():
    # Seen on real arm64 logs: the recovered report of page B, printed shortly before the
    # SEA, was taken for the SEA's own report and cleared the Ignored page A.
    crash, = classify(_untimed_sea_after_another_page(recovered=True), source="x")
    assert (crash.bucket, crash.pfn, crash.address_in_page) == ("hw-error-consumed-later", 0x40272D, "unknown")
    assert crash.delay_s is None and crash.address is None
    assert any("get hwpoison page: Ignored" in line for line in crash.evidence)
    assert not any("4130be" in line for line in crash.evidence)


def test_the_seas_own_report_of_another_page_still_clears_the_earlier_one():
    crash, = classify(_untimed_sea_after_another_page(recovered=False), source="x")
    assert crash.bucket == "firmware-fatal" and crash.address == 0x4130BE2040


def test_seed_story_sysctl_0_keeps_running_on_an_ignored_page_and_sysctl_1_fails_fast():
    kept, failed = crashes_of("arm64-ghes-sysctl0-then-1.console.log")
    assert (kept.boot, kept.bucket, kept.pfn, kept.panic) == (0, "mf-unrecovered", 0x40990, None)
    assert "reserved kernel page" in kept.signature and "hardware" in kept.signature
    assert any("physical_address: 0x0000000040990000" in line for line in kept.evidence)
    assert kept.evidence[-1].endswith("recovery action for reserved kernel page: Ignored")
    assert (failed.boot, failed.bucket, failed.pfn) == (1, "mf-fail-fast", 0x409A0)
    assert failed.panic == "Memory failure: 0x409a0: unrecoverable page"
    assert "memory_failure_work_func" in failed.frames and "hardware" in failed.signature


def test_a_boot_whose_every_failure_recovered_reports_nothing():
    text = (LOGS / "arm64-ghes-sysctl0-then-1.console.log").read_text()
    text = text.replace("0x40990: unhandlable page.", "0x40990: free buddy page.").replace(
        "reserved kernel page: Ignored", "free buddy page: Recovered", 1)
    assert [c.boot for c in classify(text, source="x")] == [1]


def test_unknown_label_still_counts_as_an_unrecovered_page():
    text = (LOGS / "arm64-sea-consumed.vmcore-dmesg.txt").read_text().replace(
        "get hwpoison page: Ignored", "kernel page of a 2030 kind: Ignored")
    crash, = classify(text, source="x")
    assert crash.bucket == "hw-error-consumed-later" and "kernel page of a 2030 kind" in crash.signature


def test_recovered_page_is_not_blamed_for_a_later_oops():
    text = (LOGS / "x86-dmesg-T-consumed.log").read_text()
    text = text.replace("get hwpoison page: Ignored", "dirty LRU page: Recovered")
    text = text.replace("Memory failure: 0x2f3a41: unhandlable page.", "Memory failure: 0x2f3a41: Killing python3")
    crash, = classify(text, source="x")
    assert crash.bucket == "software"


def test_several_boots_several_crashes_in_one_file():
    crashes = crashes_of("x86-three-boots.console.log")
    assert [(c.boot, c.bucket, c.pfn) for c in crashes] == [
        (0, "software", None), (1, "mf-legacy", 0x2), (2, "mf-fail-fast", 0x12C40)]
    assert crashes[0].panic == "sysrq triggered crash" and crashes[0].frames[0] == "sysrq_handle_crash"
    assert "hardware" in crashes[2].signature  # MCE SRAO through uc_decode_notifier, not an injector


def test_crash_kernel_relogged_mce_and_reprinted_panic_are_not_new_crashes():
    relog = crashes_of("x86-mce-fatal-then-crash-kernel-relog.console.log")
    assert len(relog) == 1 and relog[0].boot == 0
    for name in ("x86-failfast-corrupt-pfn.console.log", "arm64-failfast-slab.console.log"):
        crashes = crashes_of(name)
        assert len(crashes) == 1 and crashes[0].boot == 0, name


def test_prompt_escape_and_caller_id_prefixes_are_cleaned_in_evidence():
    crash, = crashes_of("x86-failfast-corrupt-pfn.console.log")
    assert crash.evidence[0] == "[   93.655960] Injecting memory failure at pfn 0x38830"
    assert "injected" in crash.signature and "reserved kernel page" in crash.signature
    arm, = crashes_of("arm64-failfast-slab.console.log")
    assert arm.evidence[-1].endswith("Kernel panic - not syncing: Memory failure: 0x42c00: unrecoverable page")


def _another_host(text: str) -> str:
    """The same bug seen elsewhere: other uptime, pids, caller ids and pfn/addresses."""
    text = re.sub(r"\[\s*(\d+\.\d+)\]", lambda m: "[%12.6f]" % (float(m[1]) + 1234.5), text)
    text = re.sub(r"\[ *T(\d+)\]", lambda m: f"[T{int(m[1]) + 17}]", text)
    text = re.sub(r"PID: \d+", "PID: 4242", text).replace("[Fri Mar 20 ", "[Sun Mar 22 ")
    for old, new in (("38830", "1be30"), ("42c00", "43d00"), ("40272d", "80a11b"), ("38040", "29110"),
                     ("40230", "4a230"), ("0x2:", "0x3:"), ("page 2", "page 3"),
                     ("2f3a41", "1b0001"), ("409a0", "40aa0"), ("40990", "41990"), ("1be10", "2be10"), ("12c40", "13c41")):
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("name", [p.name for p in sorted(LOGS.glob("*")) if p.is_file()])
def test_fingerprint_is_the_same_for_the_same_bug_on_another_host(name):
    text = (LOGS / name).read_text()
    here = [c.fingerprint for c in classify(text, source="a")]
    there = classify(_another_host(text), source="b")
    assert here and [c.fingerprint for c in there] == here
    assert [c.evidence for c in there] != [c.evidence for c in classify(text, source="a")]  # it did change


def test_fingerprints_differ_between_different_bugs():
    fingerprints = {}
    for path in sorted(p for p in LOGS.rglob("*") if p.is_file() and p.name != "vmcore"):
        for crash in crashes_of(path):
            fingerprints.setdefault(crash.fingerprint, set()).add(crash.signature)
    assert all(len(signatures) == 1 for signatures in fingerprints.values())
    # injected fail-fast on x86, arm64 and RHEL is one bug; legacy via corrupt-pfn and hard_offline too;
    # so is a hardware error failing fast on a kernel page (x86 MCE SRAO, arm64 GHES)
    assert len(fingerprints) == 12
    oops = (LOGS / "x86-null-deref-oops.log").read_text()
    a, = classify(oops, source="a")
    b, = classify(oops.replace("nvme_reset_work+", "nvme_probe_work+"), source="b")
    assert a.fingerprint != b.fingerprint


def test_lines_and_text_inputs_agree():
    text = (LOGS / "x86-three-boots.console.log").read_text()
    assert classify(text.splitlines(), source="x") == classify(text, source="x")


@pytest.mark.parametrize("chunk", [7_000, 65_536, 1 << 20])
def test_chunk_boundaries_do_not_change_the_result(chunk):
    noise = "".join("[%12.6f] systemd[1]: Started session-%d.scope - Session of user root.\n" % (i * 0.01, i)
                    for i in range(30_000))
    crash_log = (LOGS / "arm64-sea-consumed.vmcore-dmesg.txt").read_text()
    text = noise[:1_000_000] + crash_log + noise + (LOGS / "x86-null-deref-oops.log").read_text()
    whole = list(triage_stream([text], source="x"))
    pieces = list(triage_stream((text[i:i + chunk] for i in range(0, len(text), chunk)), source="x"))
    assert [c.bucket for c in whole] == ["hw-error-consumed-later", "software"]
    assert pieces == whole


def test_directory_walk_picks_logs_and_skips_dump_files():
    out = io.StringIO()
    assert triage_paths([str(LOGS)], jsonl=True, out=out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    files = {Path(r["file"]).name for r in rows}
    assert "vmcore-dmesg.txt" in files and "dmesg.202611251737" in files and "vmcore" not in files
    assert len(rows) == 16
    for key in ("file", "bucket", "fingerprint", "pfn", "panic", "evidence", "delay_s", "address_in_page", "boot"):
        assert all(key in r for r in rows), key
    sea = next(r for r in rows if r["file"].endswith("arm64-sea-consumed.vmcore-dmesg.txt"))
    assert sea["pfn"] == "0x40272d" and sea["delay_s"] == pytest.approx(67.349)


def test_table_output_lists_crashes_and_counts_per_fingerprint():
    out = io.StringIO()
    assert triage_paths([str(LOGS / "x86-three-boots.console.log"), str(RHEL)], jsonl=False, out=out) == 0
    text = out.getvalue()
    assert "mf-legacy" in text and "sysrq triggered crash" in text
    assert text.rstrip().endswith("4 crash(es) in 2 file(s)")


def test_gzipped_log_reads_like_the_plain_one(tmp_path):
    plain = LOGS / "arm64-sea-consumed.vmcore-dmesg.txt"
    packed = tmp_path / "vmcore-dmesg.txt.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert [c.fingerprint for c in triage_file(str(packed))] == [c.fingerprint for c in triage_file(str(plain))]


def test_missing_file_exits_2_with_one_line_naming_it(capsys):
    parser = argparse.ArgumentParser(prog="orchestrator")
    add_triage_command(parser.add_subparsers())
    args = parser.parse_args(["triage", str(LOGS / "dmesg.202611251737"), "/nonexistent/dmesg.1"])
    assert args.func(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "/nonexistent/dmesg.1" in captured.err
    assert "Traceback" not in captured.err


def test_corrupt_gzip_is_bad_input_and_the_rest_still_runs(tmp_path, capsys):
    broken = tmp_path / "dmesg.1.gz"
    broken.write_bytes(b"not gzip at all")
    out = io.StringIO()
    assert triage_paths([str(broken), str(LOGS / "dmesg.202611251737")], jsonl=True, out=out) == 2
    assert len(out.getvalue().splitlines()) == 1
    assert str(broken) in capsys.readouterr().err


def test_100mb_log_streams_in_bounded_memory(tmp_path):
    block = "".join("[%12.6f] e1000e 0000:00:1f.6 eno1: NIC Link is Up 1000 Mbps Full Duplex, Flow Control: Rx/Tx\n"
                    % (i * 0.001) for i in range(10_000))
    crash = (LOGS / "x86-null-deref-oops.log").read_text()
    path = tmp_path / "big-console.log"
    with open(path, "w") as stream:
        for i in range(104):
            stream.write(block)
            if i % 26 == 25:  # one crash per boot, four boots
                stream.write(crash)
    assert path.stat().st_size > 100_000_000
    tracemalloc.start()
    try:
        crashes = list(triage_file(str(path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [c.bucket for c in crashes] == ["software"] * 4
    assert len({c.fingerprint for c in crashes}) == 1
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"  # a 1 MiB chunk plus windows, not the file


def test_json_output_into_head_stops_quietly():
    # The fixture folder given 20 times writes ~240 KB: more than a pipe holds, so the
    # writes after ``head`` exits really do fail with EPIPE.
    triage = subprocess.Popen([sys.executable, "-m", "orchestrator", "triage", "--json", *[str(LOGS)] * 20],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=triage.stdout, stdout=subprocess.PIPE)
    triage.stdout.close()           # only head holds the read end: its exit breaks the pipe
    first, _ = head.communicate(timeout=60)
    stderr = triage.stderr.read()
    triage.stderr.close()
    assert triage.wait(timeout=60) == 0
    assert stderr == b""
    assert len(first.splitlines()) == 1 and json.loads(first)["bucket"]
