"""Target selection: pfnfind.sh run locally (dash+mawk, and busybox when available) against
kpageflags/kpagecount files built from tests/fixtures/kernel/pages-*.txt."""

from __future__ import annotations

import os
import time
import struct
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.kernel import pages, pfnfind
from orchestrator.kernel.pages import ProcPaths, TargetNotFound, explicit_target, parse_iomem, select_target
from orchestrator.kernel.target import KPF
from test_kernel_shells import FakeShell, LocalShell, busybox_shell

FIXTURES = Path(__file__).parent / "fixtures" / "kernel"
RAM_END_PFN = {"x86_64": 0x40000, "aarch64": 0x80000}


def build_proc(tmp_path: Path, arch: str, drop=(), extra=None, kallsyms="kallsyms-aarch64.txt"):
    """Binary kpageflags/kpagecount (native little-endian u64 per pfn) from the text spec."""
    spec = {}
    for line in (FIXTURES / f"pages-{arch}.txt").read_text().splitlines():
        line = line.split("#")[0].split()
        if line:
            pfn, flags, count = int(line[0], 16), line[1], int(line[2])
            spec[pfn] = (sum(1 << KPF[f] for f in flags.split("|") if f != "-"), count)
    spec.update(extra or {})
    for pfn in drop:
        spec.pop(pfn)
    flags_file, count_file = tmp_path / "kpageflags", tmp_path / "kpagecount"
    with open(flags_file, "wb") as fl, open(count_file, "wb") as ct:
        for pfn, (flags, count) in spec.items():
            fl.seek(pfn * 8), fl.write(struct.pack("<Q", flags))
            ct.seek(pfn * 8), ct.write(struct.pack("<Q", count))
        fl.truncate(RAM_END_PFN[arch] * 8), ct.truncate(RAM_END_PFN[arch] * 8)
    return ProcPaths(kpageflags=str(flags_file), kpagecount=str(count_file),
                     iomem=str(FIXTURES / f"iomem-{arch}.txt"), kallsyms=str(FIXTURES / kallsyms),
                     proc=str(tmp_path / "proc"))


@pytest.fixture(params=["dash", "busybox"])
def shell(request, tmp_path):
    return LocalShell() if request.param == "dash" else busybox_shell(tmp_path)


def test_parse_iomem_keeps_nesting():
    ranges = parse_iomem((FIXTURES / "iomem-x86_64.txt").read_text())
    rodata = next(r for r in ranges if r.name == "Kernel rodata")
    assert (rodata.start, rodata.end, rodata.depth) == (0x38800000, 0x39226fff, 1)
    virtio = next(r for r in ranges if r.name == "virtio-pci-modern")
    assert virtio.depth == 2
    assert [r.name for r in ranges if r.depth == 0 and r.name == "System RAM"] == ["System RAM"] * 2
    arm = parse_iomem((FIXTURES / "iomem-aarch64.txt").read_text())
    assert not any(r.name == "Kernel rodata" for r in arm)
    assert next(r for r in arm if r.name == "Kernel code").start == 0x40200000


X86_ANSWERS = {"reserved-low": 0x4, "slab": 0x1050, "pgtable": 0x2000, "free-buddy": 0x12000,
               "kernel-text": 0x37611, "kernel-rodata": 0x38812, "kernel-data": 0x39410,
               "user-file": 0x3002}
ARM64_ANSWERS = {"reserved-low": 0x40000, "kernel-text": 0x40210, "kernel-rodata": 0x41340,
                 "kernel-data": 0x42500, "slab": 0x42c00, "pgtable": 0x42dca,
                 "free-buddy": 0x52000}


@pytest.mark.parametrize("page_class,pfn", sorted(X86_ANSWERS.items()))
def test_x86_each_class(shell, tmp_path, page_class, pfn):
    paths = build_proc(tmp_path, "x86_64")
    target = select_target(shell, page_class, arch="x86_64", paths=paths, timeout=60,
                           scratch_dir=str(tmp_path))
    assert (target.page_class, target.pfn, target.phys_addr) == (page_class, pfn, pfn * 4096)
    assert target.kpagecount == 0
    bit = {"slab": "SLAB", "pgtable": "PGTABLE", "free-buddy": "BUDDY", "user-file": "LRU"}
    assert target.kpageflags >> KPF[bit.get(page_class, "RESERVED")] & 1
    assert not target.kpageflags >> KPF["HWPOISON"] & 1


@pytest.mark.parametrize("page_class,pfn", sorted(ARM64_ANSWERS.items()))
def test_arm64_each_class(shell, tmp_path, page_class, pfn):
    paths = build_proc(tmp_path, "aarch64")
    target = select_target(shell, page_class, arch="aarch64", paths=paths)
    assert target.pfn == pfn and target.phys_addr == pfn << 12


def test_arm64_rodata_without_kallsyms_addresses_uses_later_part_of_kernel_code(tmp_path):
    paths = build_proc(tmp_path, "aarch64", kallsyms="kallsyms-aarch64-hidden.txt")
    target = select_target(LocalShell(), "kernel-rodata", arch="aarch64", paths=paths)
    assert target.pfn == 0x41600 and "guessed" in target.how


def test_avoid_skips_to_the_next_candidate(tmp_path):
    paths = build_proc(tmp_path, "x86_64")
    target = select_target(LocalShell(), "reserved-low", arch="x86_64", paths=paths,
                           avoid=frozenset({0x4}))
    assert target.pfn == 0x5


def test_free_buddy_falls_back_to_lower_pfns(tmp_path):
    paths = build_proc(tmp_path, "x86_64", drop=[0x12000])
    assert select_target(LocalShell(), "free-buddy", arch="x86_64", paths=paths).pfn == 0x5000


def test_crash_kernel_pages_are_never_chosen(shell, tmp_path):
    # only page table left is the one inside "Crash kernel"
    paths = build_proc(tmp_path, "x86_64", drop=[0x1000, 0x2000])
    with pytest.raises(TargetNotFound, match="pgtable: no candidate"):
        select_target(shell, "pgtable", arch="x86_64", paths=paths)


def test_no_candidate_on_arm64(tmp_path):
    paths = build_proc(tmp_path, "aarch64", drop=[0x42c00, 0x42c08])
    with pytest.raises(TargetNotFound):
        select_target(LocalShell(), "slab", arch="aarch64", paths=paths)


def test_unknown_class_is_config_error(tmp_path):
    with pytest.raises(ConfigError):
        select_target(FakeShell([]), "kernel-bss", arch="x86_64")


def test_iomem_without_addresses_is_refused(tmp_path):
    paths = ProcPaths(iomem=str(FIXTURES / "iomem-nonroot.txt"))
    with pytest.raises(TargetNotFound, match="not root"):
        select_target(LocalShell(), "slab", arch="x86_64", paths=paths)


def test_explicit_target_reads_flags_and_refuses_poisoned(tmp_path):
    paths = build_proc(tmp_path, "x86_64")
    target = explicit_target(LocalShell(), 0x4, paths=paths)
    assert (target.page_class, target.kpageflags, target.kpagecount) == ("pfn", 1 << 32, 0)
    assert "RESERVED" in target.how
    with pytest.raises(TargetNotFound, match="HWPOISON"):
        explicit_target(LocalShell(), 0x1, paths=paths)
    with pytest.raises(TargetNotFound, match="beyond"):
        explicit_target(LocalShell(), 0x90000, paths=paths)


def write_victim(proc: Path, pid: int, pagemap: dict[int, int]):
    """A fake /proc/PID with maps (heap, an anonymous mapping, a file text mapping) and pagemap."""
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "maps").write_text(
        "00400000-00410000 r-xp 00000000 fe:00 123   /usr/bin/busybox\n"
        "01000000-01004000 rw-p 00000000 00:00 0     [heap]\n"
        "02000000-02002000 rw-p 00000000 00:00 0 \n")
    with open(proc / str(pid) / "pagemap", "wb") as f:
        for vaddr, entry in pagemap.items():
            f.seek(vaddr // 4096 * 8), f.write(struct.pack("<Q", entry))


def test_anon_mode_picks_a_present_exclusive_lru_anon_page(shell, tmp_path):
    present, swapped = 1 << 63, 1 << 62
    anon_lru = (1 << KPF["ANON"]) | (1 << KPF["LRU"])
    paths = build_proc(tmp_path, "x86_64", extra={
        0x6000: (anon_lru | 1 << KPF["HWPOISON"], 1), 0x6001: (anon_lru, 2),
        0x6002: (1 << KPF["ANON"], 1), 0x6003: (anon_lru | 1 << KPF["SWAPBACKED"], 1),
        0x6004: (anon_lru, 1)})
    write_victim(Path(paths.proc), 4242, {
        0x400000: present | 0x6004,                 # text page: not an anonymous mapping
        0x1000000: present | 0x6000, 0x1001000: swapped | 0x6003, 0x1003000: present | 0x6001,
        0x2000000: present | 0x6002, 0x2001000: present | 1 << 55 | 0x6003})  # 55 = soft-dirty
    crit = pages.CRITERIA["user-anon"]
    args = ["--victim-pid", "4242", "--all", pfnfind.kpf_bits(crit.all), "--none",
            pfnfind.kpf_bits(crit.none), "--maxcount", "1"]
    result = pfnfind.run_pfnfind(shell, "anon", args, paths, 4096, time.monotonic() + 30)
    assert result.stdout.strip() == f"pfn={0x6003} flags={anon_lru | 1 << 14:016x} count=1 pid=4242"


def test_user_anon_target_carries_the_kill_cleanup():
    shell = FakeShell([(r"sh -s -- anon .*--all 12,5 ", "pfn=12345 flags=0000000000005828 count=1 pid=777\n")])
    target = select_target(shell, "user-anon", arch="aarch64")
    assert (target.pfn, target.kpageflags, target.cleanup) == (12345, 0x5828, "kill 777 2>/dev/null; true")
    assert "ANON|SWAPBACKED" in target.how


def test_pfnfind_usage_error_is_reported():
    shell = FakeShell([(r"sh -s", "", 2, "pfnfind: unknown option --bogus")])
    with pytest.raises(TargetNotFound, match="unknown option"):
        select_target(shell, "user-anon", arch="x86_64")


# --- the machine the tests run on: read-only selection against its real /proc -----------------

def _real_flags(pfn: int) -> int:
    with open("/proc/kpageflags", "rb") as f:
        f.seek(pfn * 8)
        return struct.unpack("<Q", f.read(8))[0]


needs_real_proc = pytest.mark.skipif(
    not (os.geteuid() == 0 and os.access("/proc/kpageflags", os.R_OK)
         and "Kernel code" in Path("/proc/iomem").read_text()),
    reason="needs root and /proc/kpageflags on an x86 host")


@needs_real_proc
@pytest.mark.parametrize("page_class", pages.PAGE_CLASSES)
def test_real_host_selection(page_class, tmp_path):
    shell = LocalShell()
    target = select_target(shell, page_class, arch="x86_64", scratch_dir="/var/tmp")
    try:
        wanted = pages.CRITERIA[page_class]
        assert all(target.kpageflags >> KPF[b] & 1 for b in wanted.all), target
        assert not any(target.kpageflags >> KPF[b] & 1 for b in wanted.none), target
        if page_class in ("kernel-rodata", "kernel-text", "kernel-data", "reserved-low"):
            assert _real_flags(target.pfn) == target.kpageflags      # reserved pages stay put
    finally:
        if target.cleanup:
            shell.run(target.cleanup, timeout=10)


def test_arm64_text_window_stops_before_rodata(tmp_path):
    paths = build_proc(tmp_path, "aarch64")
    with pytest.raises(TargetNotFound, match="text before rodata"):
        select_target(LocalShell(), "kernel-text", arch="aarch64", paths=paths,
                      avoid=frozenset({0x40210}))        # next reserved page (0x41340) is rodata
