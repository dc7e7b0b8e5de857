"""Running the shipped ``pfnfind.sh`` on a host and reading its answer.

The script does the looking with sh/dd/od/awk only (no Python on the host), stopping at the
first page whose kpageflags have every ``all`` bit and no ``none`` bit; pages.py decides
where it looks and with which criteria.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from importlib import resources

from orchestrator.kernel.target import KPF, Target, TargetNotFound, decode_kpageflags
from orchestrator.protocols.shell import CommandResult, ShellProtocol


@dataclass(frozen=True)
class ProcPaths:
    """Where the host's /proc files are; unit tests point these at fixture files."""
    kpageflags: str = "/proc/kpageflags"
    kpagecount: str = "/proc/kpagecount"
    iomem: str = "/proc/iomem"
    kallsyms: str = "/proc/kallsyms"
    proc: str = "/proc"


@dataclass(frozen=True)
class Criteria:
    all: tuple[str, ...]
    none: tuple[str, ...]
    maxcount: int = 0           # kpagecount ceiling: 0 = no process maps it


def find_target(shell: ShellProtocol, mode: str, crit: Criteria, args: list[str], page_class: str,
                what: str, page_size: int, avoid: frozenset[int], paths: ProcPaths,
                deadline: float) -> Target:
    """The first page pfnfind's ``mode`` finds meeting ``crit``; ``what`` says where it looked."""
    args = args + ["--all", kpf_bits(crit.all), "--none", kpf_bits(crit.none),
                   "--maxcount", str(crit.maxcount)]
    if avoid:
        args += ["--avoid", ",".join(str(p) for p in sorted(avoid))]
    result = run_pfnfind(shell, mode, args, paths, page_size, deadline)
    found = parse_found(result.stdout)
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


def run_pfnfind(shell: ShellProtocol, mode: str, args: list[str], paths: ProcPaths, page_size: int,
                deadline: float) -> CommandResult:
    script = resources.files("orchestrator.kernel").joinpath("pfnfind.sh").read_text()
    common = ["--kpageflags", paths.kpageflags, "--kpagecount", paths.kpagecount,
              "--proc", paths.proc, "--page-size", str(page_size)]
    argv = " ".join(shlex.quote(a) for a in [mode, *common, *args])
    command = f"sh -s -- {argv} <<'__PFNFIND_EOF__'\n{script.rstrip()}\n__PFNFIND_EOF__\n"
    result = shell.run(command, timeout=time_left(deadline), check=False)
    if result.exit_code not in (0, 3):
        raise TargetNotFound(f"pfnfind {mode} failed (exit {result.exit_code}): "
                             f"{result.stderr.strip() or result.stdout.strip()}")
    return result


_FOUND = re.compile(r"^pfn=(\d+) flags=([0-9a-f]{16}) count=(\d+)(?: pid=(\d+))?(?: dir=(\S+))?$",
                    re.M)


def parse_found(stdout: str) -> dict | None:
    m = _FOUND.search(stdout)
    if not m:
        return None
    return {"pfn": int(m[1]), "flags": int(m[2], 16), "count": int(m[3]), "pid": m[4], "dir": m[5]}


def read_host(shell: ShellProtocol, command: str, deadline: float) -> str:
    """stdout of a command that must succeed before ``deadline``."""
    result = shell.run(command, timeout=time_left(deadline), check=False)
    if not result.ok:
        raise TargetNotFound(f"{command!r} failed: {result.stderr.strip()}")
    return result.stdout


def time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TargetNotFound("target selection ran out of time")
    return left


def kpf_bits(names) -> str:
    return ",".join(str(KPF[n]) for n in names)
