"""Choosing the page frame to poison: a fresh, unpoisoned pfn of a given page class.

Python decides WHERE to look (from /proc/iomem, and /proc/kallsyms for arm64 rodata); the
shipped ``pfnfind.sh`` does the looking on the host with sh/dd/od/awk only, stopping at the
first match. kpageflags bits: include/uapi/linux/kernel-page-flags.h (kernel-facts.md §5.1).
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from importlib import resources

from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.protocols.shell import ShellProtocol

PAGE_CLASSES = ("kernel-rodata", "kernel-text", "kernel-data", "reserved-low", "slab", "pgtable",
                "free-buddy", "user-anon", "user-file")

KPF = {"LOCKED": 0, "ERROR": 1, "REFERENCED": 2, "UPTODATE": 3, "DIRTY": 4, "LRU": 5, "ACTIVE": 6,
       "SLAB": 7, "WRITEBACK": 8, "RECLAIM": 9, "BUDDY": 10, "MMAP": 11, "ANON": 12, "SWAPCACHE": 13,
       "SWAPBACKED": 14, "COMPOUND_HEAD": 15, "COMPOUND_TAIL": 16, "HUGE": 17, "UNEVICTABLE": 18,
       "HWPOISON": 19, "NOPAGE": 20, "KSM": 21, "THP": 22, "OFFLINE": 23, "ZERO_PAGE": 24, "IDLE": 25,
       "PGTABLE": 26, "RESERVED": 32, "MLOCKED": 33, "MAPPEDTODISK": 34, "PRIVATE": 35}

MIB = 1 << 20


def decode_kpageflags(flags: int) -> tuple[str, ...]:
    return tuple(name for name, bit in KPF.items() if flags >> bit & 1)


@dataclass(frozen=True)
class Target:
    page_class: str
    pfn: int
    phys_addr: int
    kpageflags: int
    kpagecount: int | None
    how: str                    # evidence: where it was found and why it qualifies
    cleanup: str | None         # sh command to run after a survive case (idempotent)
    page_size: int = 4096


class TargetNotFound(FatalInfraError):
    """No page of the class qualifies (or the host cannot be scanned)."""


@dataclass(frozen=True)
class IomemRange:
    start: int
    end: int                    # inclusive, as /proc/iomem prints it
    name: str
    depth: int                  # 0 = top level; children are indented two spaces per level


def parse_iomem(text: str) -> list[IomemRange]:
    ranges = []
    for line in text.splitlines():
        m = re.match(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$", line)
        if m:
            ranges.append(IomemRange(int(m[2], 16), int(m[3], 16), m[4].strip(), len(m[1]) // 2))
    return ranges


@dataclass(frozen=True)
class ProcPaths:
    """Where the host's /proc files are; unit tests point these at fixture files."""
    kpageflags: str = "/proc/kpageflags"
    kpagecount: str = "/proc/kpagecount"
    iomem: str = "/proc/iomem"
    kallsyms: str = "/proc/kallsyms"
    proc: str = "/proc"


@dataclass(frozen=True)
class _Criteria:
    all: tuple[str, ...]
    none: tuple[str, ...]
    maxcount: int = 0           # kpagecount ceiling: 0 = no process maps it


# Never poison these: already poisoned, no struct page, or mapped by every process (the zero
# page and vDSO are reserved pages whose loss kills userspace: kernel-7.3-behaviour.md).
_UNUSABLE = ("HWPOISON", "NOPAGE", "OFFLINE", "ZERO_PAGE")
_KERNEL_NONE = _UNUSABLE + ("MMAP", "COMPOUND_TAIL", "LRU", "BUDDY", "ANON")
_RESERVED = _Criteria(("RESERVED",), _KERNEL_NONE + ("SLAB", "PGTABLE"))
_SINGLE_PAGE = ("COMPOUND_HEAD", "COMPOUND_TAIL", "THP", "HUGE", "KSM", "UNEVICTABLE", "LOCKED")
CRITERIA = {
    "kernel-rodata": _RESERVED, "kernel-text": _RESERVED, "kernel-data": _RESERVED,
    "reserved-low": _RESERVED,
    "slab": _Criteria(("SLAB",), _KERNEL_NONE + ("RESERVED",)),
    "pgtable": _Criteria(("PGTABLE",), _KERNEL_NONE + ("RESERVED",)),
    "free-buddy": _Criteria(("BUDDY",), _UNUSABLE + ("MMAP", "LRU", "ANON", "RESERVED", "SLAB")),
    "user-anon": _Criteria(("ANON", "LRU"), _UNUSABLE + _SINGLE_PAGE + ("SWAPCACHE",), maxcount=1),
    "user-file": _Criteria(("LRU", "UPTODATE"), _UNUSABLE + _SINGLE_PAGE + (
        "MMAP", "ANON", "SWAPBACKED", "DIRTY", "WRITEBACK", "SLAB", "RESERVED")),
}

KERNEL_IMAGE_SKIP = 16          # pages after a region's start, as the references did (start+16)
_ARM64_MARGIN = 32              # arm64 "Kernel code" starts at _text or _stext (16 pages apart)
_RODATA_SYMBOLS = ("_text", "__start_rodata", "__end_rodata")


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
        return _from_script(shell, "anon", crit, [], page_class, "present anonymous page of a "
                            "sacrificial shell (pagemap)", page_size, avoid, paths, deadline)
    iomem = parse_iomem(_read(shell, f"cat {shlex.quote(paths.iomem)}", deadline))
    ram = _ram_pfns(iomem, page_size)
    if not ram:
        raise TargetNotFound(f"no System RAM with real addresses in {paths.iomem} (not root?)")
    ram_start = ram[0][0]
    low = ram_start + 16 * MIB // page_size          # the selftest skips the first 16 MiB
    if page_class == "user-file":
        try:
            return _from_script(shell, "file", crit, ["--dir", scratch_dir], page_class,
                                f"text page of a copy of sleep in {scratch_dir}, mapped then "
                                f"unmapped", page_size, avoid, paths, deadline)
        except TargetNotFound as exc:
            fallback = f"any clean unmapped page-cache page ({exc})"
            return _scan(shell, crit, _clip(ram, low, None), page_class, fallback, page_size,
                         avoid, paths, deadline)
    if page_class == "reserved-low":
        windows = _subtract(_clip(ram, ram_start, low), _pfns_named(iomem, "Kernel ", page_size))
        what = f"lowest unmapped reserved page of the first 16 MiB of RAM (from pfn {ram_start:#x})"
    elif page_class in ("slab", "pgtable"):
        windows, what = _clip(ram, low, None), f"first {page_class} page from pfn {low:#x}"
    elif page_class == "free-buddy":
        quarter = ram_start + (ram[-1][1] - ram_start) // 4      # high pfns: away from DMA zones
        windows = _clip(ram, quarter, None) + _clip(ram, low, quarter)
        what = f"first free buddy page from pfn {quarter:#x}"
    else:
        windows, what = _kernel_image_window(shell, page_class, iomem, page_size, paths, deadline,
                                             arch)
    return _scan(shell, crit, windows, page_class, what, page_size, avoid, paths, deadline)


def explicit_target(shell: ShellProtocol, pfn: int, *, page_size: int = 4096,
                    paths: ProcPaths = ProcPaths(), timeout: float = 30.0) -> Target:
    """The pfn the playbook names, refused if it is already poisoned or has no struct page."""
    result = _pfnfind(shell, "info", ["--pfn", str(pfn)], paths, page_size,
                      time.monotonic() + timeout)
    found = _parse_found(result.stdout)
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
    own = _pfns_named(iomem, region, page_size, exact=True)
    rodata_listed = bool(_pfns_named(iomem, "Kernel rodata", page_size, exact=True))
    if own and (page_class != "kernel-text" or rodata_listed):   # else arm64: text ends at rodata
        start, end = own[0]
        return [(start + KERNEL_IMAGE_SKIP, end)], f"{region} pfns {start:#x}-{end:#x}, from start+16"
    code = _pfns_named(iomem, "Kernel code", page_size, exact=True)
    if page_class == "kernel-data" or not code:
        raise TargetNotFound(f"no {region!r} (nor 'Kernel code') in {paths.iomem} on {arch}")
    start, end = code[0]
    awk = " || ".join(f'$3 == "{s}"' for s in _RODATA_SYMBOLS)
    syms = {}
    for line in _read(shell, f"awk '{awk} {{ print $3, $1 }}' {shlex.quote(paths.kallsyms)}",
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
    return _from_script(shell, "scan", crit, args, page_class, what, page_size, avoid, paths,
                        deadline)


def _from_script(shell, mode, crit, args, page_class, what, page_size, avoid, paths,
                 deadline) -> Target:
    args = args + ["--all", _bits(crit.all), "--none", _bits(crit.none),
                   "--maxcount", str(crit.maxcount)]
    if avoid:
        args += ["--avoid", ",".join(str(p) for p in sorted(avoid))]
    result = _pfnfind(shell, mode, args, paths, page_size, deadline)
    found = _parse_found(result.stdout)
    if found is None:
        raise TargetNotFound(f"{page_class}: no candidate ({what}): {result.stdout.strip()}")
    pfn, flags = found["pfn"], found["flags"]
    cleanup = None
    if found["pid"]:
        cleanup = f"kill {found['pid']} 2>/dev/null; true"
    elif found["dir"]:
        cleanup = f"rm -rf {shlex.quote(found['dir'])}"
    how = f"{what}: kpageflags {flags:#x} ({'|'.join(decode_kpageflags(flags))}), " \
          f"kpagecount {found['count']}"
    return Target(page_class, pfn, pfn * page_size, flags, found["count"], how, cleanup, page_size)


def _pfnfind(shell, mode, args, paths, page_size, deadline):
    script = resources.files("orchestrator.kernel").joinpath("pfnfind.sh").read_text()
    common = ["--kpageflags", paths.kpageflags, "--kpagecount", paths.kpagecount,
              "--proc", paths.proc, "--page-size", str(page_size)]
    argv = " ".join(shlex.quote(a) for a in [mode, *common, *args])
    command = f"sh -s -- {argv} <<'__PFNFIND_EOF__'\n{script.rstrip()}\n__PFNFIND_EOF__\n"
    result = shell.run(command, timeout=_left(deadline), check=False)
    if result.exit_code not in (0, 3):
        raise TargetNotFound(f"pfnfind {mode} failed (exit {result.exit_code}): "
                             f"{result.stderr.strip() or result.stdout.strip()}")
    return result


_FOUND = re.compile(r"^pfn=(\d+) flags=([0-9a-f]{16}) count=(\d+)(?: pid=(\d+))?(?: dir=(\S+))?$",
                    re.M)


def _parse_found(stdout: str) -> dict | None:
    m = _FOUND.search(stdout)
    if not m:
        return None
    return {"pfn": int(m[1]), "flags": int(m[2], 16), "count": int(m[3]), "pid": m[4], "dir": m[5]}


def _read(shell, command, deadline) -> str:
    result = shell.run(command, timeout=_left(deadline), check=False)
    if not result.ok:
        raise TargetNotFound(f"{command!r} failed: {result.stderr.strip()}")
    return result.stdout


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TargetNotFound("target selection ran out of time")
    return left


def _bits(names) -> str:
    return ",".join(str(KPF[n]) for n in names)


def _pfn_span(r: IomemRange, page_size: int) -> tuple[int, int]:
    return -(-r.start // page_size), (r.end + 1) // page_size      # whole pages only


def _ram_pfns(iomem, page_size) -> list[tuple[int, int]]:
    ram = [_pfn_span(r, page_size) for r in iomem if r.depth == 0 and r.name == "System RAM"]
    holes = _pfns_named(iomem, "Crash kernel", page_size)    # poisoning it would break kdump
    return _subtract([s for s in ram if s[1] > 0], holes)


def _pfns_named(iomem, name, page_size, exact=False) -> list[tuple[int, int]]:
    return [_pfn_span(r, page_size) for r in iomem
            if (r.name == name if exact else r.name.startswith(name))]


def _clip(spans, lo, hi):
    hi = float("inf") if hi is None else hi
    return [(max(a, lo), min(b, hi)) for a, b in spans if max(a, lo) < min(b, hi)]


def _subtract(spans, holes):
    for h0, h1 in holes:
        spans = [piece for a, b in spans
                 for piece in ((a, min(b, h0)), (max(a, h1), b)) if piece[0] < piece[1]]
    return spans
