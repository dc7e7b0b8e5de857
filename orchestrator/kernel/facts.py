"""The few host facts the kernel/ modules need, in one harmless round trip."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import FatalInfraError
from orchestrator.protocols.shell import ShellProtocol

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclass(frozen=True)
class HostFacts:
    arch: str              # inventory spelling: x86_64 | aarch64
    release: str           # uname -r
    page_size: int         # bytes; pfn * page_size = physical address
    kdump_loaded: bool


# KernelPageSize from smaps: getconf is not in every busybox; 4K/16K/64K arm64 kernels differ.
PROBE_CMD = ("uname -m; uname -r; "
             "awk '/^KernelPageSize:/ { print $2 * 1024; exit }' /proc/self/smaps; "
             "cat /sys/kernel/kexec_crash_loaded 2>/dev/null || echo 0")


def probe_facts(shell: ShellProtocol) -> HostFacts:
    return parse_facts(shell.run(PROBE_CMD, timeout=30).stdout.split())


def parse_facts(words: list[str]) -> HostFacts:
    if len(words) != 4 or not words[2].isdigit():
        raise FatalInfraError(f"unexpected host facts output: {words!r}")
    machine, release, page_size, loaded = words
    if machine not in _ARCH:
        raise FatalInfraError(f"unsupported architecture {machine!r}")
    return HostFacts(_ARCH[machine], release, int(page_size), loaded == "1")
