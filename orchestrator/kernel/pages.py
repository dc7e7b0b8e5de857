"""Choosing the page frame to poison: a fresh, unpoisoned pfn of a given page class.

Python decides WHERE to look (from /proc/iomem, and /proc/kallsyms for arm64 rodata) and
with which kpageflags criteria; the shipped ``pfnfind.sh`` does the looking on the host
(pfnfind.py runs it). The chosen page is a ``Target`` (target.py).
"""

from __future__ import annotations

import shlex
import time

from orchestrator.config.playbook import PAGE_CLASSES
from orchestrator.errors import ConfigError
from orchestrator.kernel.iomem import clip, parse_iomem, pfns_named, ram_pfns, subtract
from orchestrator.kernel.pfnfind import Criteria, ProcPaths, find_target, parse_found, read_host, run_pfnfind
from orchestrator.kernel.target import Target, TargetNotFound, decode_kpageflags
from orchestrator.protocols.shell import ShellProtocol

MIB = 1 << 20

# Never poison these: already poisoned, no struct page, or mapped by every process (the zero
# page and vDSO are reserved pages whose loss kills userspace: kernel-7.3-behaviour.md).
_UNUSABLE = ("HWPOISON", "NOPAGE", "OFFLINE", "ZERO_PAGE")
_KERNEL_NONE = _UNUSABLE + ("MMAP", "COMPOUND_TAIL", "LRU", "BUDDY", "ANON")
_RESERVED = Criteria(("RESERVED",), _KERNEL_NONE + ("SLAB", "PGTABLE"))
_SINGLE_PAGE = ("COMPOUND_HEAD", "COMPOUND_TAIL", "THP", "HUGE", "KSM", "UNEVICTABLE", "LOCKED")
CRITERIA = {
    "kernel-rodata": _RESERVED, "kernel-text": _RESERVED, "kernel-data": _RESERVED,
    "reserved-low": _RESERVED,
    "slab": Criteria(("SLAB",), _KERNEL_NONE + ("RESERVED",)),
    "pgtable": Criteria(("PGTABLE",), _KERNEL_NONE + ("RESERVED",)),
    "free-buddy": Criteria(("BUDDY",), _UNUSABLE + ("MMAP", "LRU", "ANON", "RESERVED", "SLAB")),
    "user-anon": Criteria(("ANON", "LRU"), _UNUSABLE + _SINGLE_PAGE + ("SWAPCACHE",), maxcount=1),
    "user-file": Criteria(("LRU", "UPTODATE"), _UNUSABLE + _SINGLE_PAGE + (
        "MMAP", "ANON", "SWAPBACKED", "DIRTY", "WRITEBACK", "SLAB", "RESERVED")),
}

KERNEL_IMAGE_SKIP = 16          # pages after a region's start, as the references did (start+16)
_ARM64_MARGIN = 32              # arm64 "Kernel code" starts at _text or _stext (16 pages apart)
_RODATA_SYMBOLS = ("_text", "__start_rodata", "__end_rodata")


def first_reads(page_class: str, paths: ProcPaths = ProcPaths()) -> list[str]:
    """The command ``select_target`` starts with for ``page_class`` (for shell_batch.py)."""
    return [] if page_class in ("pfn", "user-anon") else [_iomem_read(paths)]


def _iomem_read(paths: ProcPaths) -> str:
    return f"cat {shlex.quote(paths.iomem)}"


def select_target(shell: ShellProtocol, page_class: str, *, arch: str, page_size: int = 4096,
                  avoid: frozenset[int] = frozenset(), timeout: float = 60.0,
                  paths: ProcPaths = ProcPaths(), scratch_dir: str = "/var/tmp") -> Target:
    """A fresh pfn of ``page_class``. ``scratch_dir`` holds user-file's victim file: use a
    directory on a persistent (disk-backed) filesystem, or the generic scan is used."""
    if page_class not in CRITERIA:
        raise ConfigError(f"unknown page class {page_class!r}; known: {', '.join(PAGE_CLASSES)}")
    deadline = time.monotonic() + timeout
    crit = CRITERIA[page_class]
    if page_class == "user-anon":
        return find_target(shell, "anon", crit, [], page_class, "present anonymous page of a "
                            "sacrificial shell (pagemap)", page_size, avoid, paths, deadline)
    iomem = parse_iomem(read_host(shell, _iomem_read(paths), deadline))
    ram = ram_pfns(iomem, page_size)
    if not ram:
        raise TargetNotFound(f"no System RAM with real addresses in {paths.iomem} (not root?)")
    ram_start = ram[0][0]
    low = ram_start + 16 * MIB // page_size          # the selftest skips the first 16 MiB
    if page_class == "user-file":
        try:
            return find_target(shell, "file", crit, ["--dir", scratch_dir], page_class,
                                f"text page of a copy of sleep in {scratch_dir}, mapped then "
                                f"unmapped", page_size, avoid, paths, deadline)
        except TargetNotFound as exc:
            fallback = f"any clean unmapped page-cache page ({exc})"
            return _scan(shell, crit, clip(ram, low, None), page_class, fallback, page_size,
                         avoid, paths, deadline)
    if page_class == "reserved-low":
        windows = subtract(clip(ram, ram_start, low), pfns_named(iomem, "Kernel ", page_size))
        what = f"lowest unmapped reserved page of the first 16 MiB of RAM (from pfn {ram_start:#x})"
    elif page_class in ("slab", "pgtable"):
        windows, what = clip(ram, low, None), f"first {page_class} page from pfn {low:#x}"
    elif page_class == "free-buddy":
        quarter = ram_start + (ram[-1][1] - ram_start) // 4      # high pfns: away from DMA zones
        windows = clip(ram, quarter, None) + clip(ram, low, quarter)
        what = f"first free buddy page from pfn {quarter:#x}"
    else:
        windows, what = _kernel_image_window(shell, page_class, iomem, page_size, paths, deadline,
                                             arch)
    return _scan(shell, crit, windows, page_class, what, page_size, avoid, paths, deadline)


def explicit_target(shell: ShellProtocol, pfn: int, *, page_size: int = 4096,
                    paths: ProcPaths = ProcPaths(), timeout: float = 30.0) -> Target:
    """The pfn the playbook names, refused if it is already poisoned or has no struct page."""
    result = run_pfnfind(shell, "info", ["--pfn", str(pfn)], paths, page_size,
                      time.monotonic() + timeout)
    found = parse_found(result.stdout)
    if found is None:
        raise TargetNotFound(f"pfn {pfn:#x} is beyond {paths.kpageflags}")
    flags, count = found["flags"], found["count"]
    names = decode_kpageflags(flags)
    if {"HWPOISON", "NOPAGE"} & set(names):
        raise TargetNotFound(f"pfn {pfn:#x} is unusable: kpageflags {flags:#x} ({'|'.join(names)}); "
                             "poisoned pages stay poisoned until reboot")
    return Target("pfn", pfn, pfn * page_size, flags, count,
                  f"explicit pfn {pfn:#x}: kpageflags {flags:#x} ({'|'.join(names) or 'none'}), "
                  f"kpagecount {count}", None, page_size)


def _kernel_image_window(shell, page_class, iomem, page_size, paths, deadline, arch):
    """x86 lists Kernel code/rodata/data; arm64 only Kernel code (text AND rodata) and Kernel
    data, so rodata there comes from /proc/kallsyms offsets (arm64-lab.md)."""
    region = {"kernel-text": "Kernel code", "kernel-rodata": "Kernel rodata",
              "kernel-data": "Kernel data"}[page_class]
    own = pfns_named(iomem, region, page_size, exact=True)
    rodata_listed = bool(pfns_named(iomem, "Kernel rodata", page_size, exact=True))
    if own and (page_class != "kernel-text" or rodata_listed):   # else arm64: text ends at rodata
        start, end = own[0]
        return [(start + KERNEL_IMAGE_SKIP, end)], f"{region} pfns {start:#x}-{end:#x}, from start+16"
    code = pfns_named(iomem, "Kernel code", page_size, exact=True)
    if page_class == "kernel-data" or not code:
        raise TargetNotFound(f"no {region!r} (nor 'Kernel code') in {paths.iomem} on {arch}")
    start, end = code[0]
    awk = " || ".join(f'$3 == "{s}"' for s in _RODATA_SYMBOLS)
    syms = {}
    for line in read_host(shell, f"awk '{awk} {{ print $3, $1 }}' {shlex.quote(paths.kallsyms)}",
                      deadline).splitlines():
        name, addr = line.split()
        syms[name] = int(addr, 16)
    if all(syms.get(s) for s in _RODATA_SYMBOLS):
        ro_start = start + (syms["__start_rodata"] - syms["_text"]) // page_size
        ro_end = start + (syms["__end_rodata"] - syms["_text"]) // page_size
        where = "rodata by kallsyms __start_rodata/__end_rodata"
    else:   # no addresses (kptr_restrict): rodata is the later half of Kernel code on arm64
        ro_start, ro_end = start + (end - start) * 6 // 10, start + (end - start) * 9 // 10
        where = "rodata guessed as 60-90% into the range (no kallsyms addresses)"
    if page_class == "kernel-text":
        window = (start + KERNEL_IMAGE_SKIP, min(end, ro_start - _ARM64_MARGIN))
        return [window], f"Kernel code (text+rodata) pfns {start:#x}-{end:#x}: text before {where}"
    window = (ro_start + _ARM64_MARGIN, min(end, ro_end - _ARM64_MARGIN))
    return [window], f"Kernel code (text+rodata) pfns {start:#x}-{end:#x}: {where}"


def _scan(shell, crit, windows, page_class, what, page_size, avoid, paths, deadline) -> Target:
    windows = [(a, b) for a, b in windows if a < b]
    if not windows:
        raise TargetNotFound(f"{page_class}: nothing to scan ({what})")
    args = [a for lo, hi in windows for a in ("--range", f"{lo}:{hi}")]
    return find_target(shell, "scan", crit, args, page_class, what, page_size, avoid, paths,
                        deadline)
