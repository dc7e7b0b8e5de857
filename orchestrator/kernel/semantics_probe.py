"""Measuring a kernel's semantics when no file or symbol tells them: one harmless injection.

hwpoison-inject ``corrupt-pfn`` into a slab page, with vm.panic_on_unrecoverable_memory_failure
at 0 and vm.memory_failure_recovery at 1 for the length of the write, then the kernel's own
"recovery action for <label>" line says which series version the kernel carries: v7..v10
label a slab page "reserved kernel page" (and would panic on it), v2..v6 "get hwpoison page"
(semantics.yaml, ``probe:``). With both sysctls so, memory_failure() only classifies and
logs: nothing panics, on any version (kernel-facts.md §1.3, §1.4, §2.3). The page keeps
PG_hwpoison and is never handed out again (one page per boot), the kernel goes on using it
(a simulated error corrupts nothing). One host command does it all and puts both sysctls and
the injector's filter back to exactly what they were, in an EXIT trap on the host, so a
dropped connection cannot leave them changed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from orchestrator.errors import FatalInfraError
from orchestrator.kernel.injectors import DEBUGFS
from orchestrator.kernel.pages import select_target
from orchestrator.kernel.sysctl import sysctl_path
from orchestrator.kernel.target import Target, TargetNotFound
from orchestrator.protocols.shell import ShellProtocol

#: A slab page freed (or reused) between the scan and the write gives another label: pick another.
ATTEMPTS = 3
_LINE = re.compile(r"Memory failure: (0x[0-9a-f]+): recovery action for (?P<label>[^:]+): (?P<result>\w+)")


class ProbeRefused(FatalInfraError):
    """The host's state makes the probe unsafe or impossible; nothing was injected."""


@dataclass(frozen=True)
class Measured:
    name: str | None              # the semantics, or None: the page changed under the probe
    evidence: str


def measure(shell: ShellProtocol, probe: dict, knob: str, recovery: str, *, arch: str,
            page_size: int) -> tuple[str, str]:
    """(semantics, evidence) from up to ATTEMPTS slab pages; ``probe`` is semantics.yaml's."""
    avoid: set[int] = set()
    tried = []
    started = time.monotonic()
    for _ in range(ATTEMPTS):
        target = select_target(shell, probe["page_class"], arch=arch, page_size=page_size,
                               avoid=frozenset(avoid), timeout=30)
        out = shell.run(probe_command(target, knob, recovery), timeout=30, check=False)
        found = read_answer(out.stdout, out.exit_code, target, probe["labels"])
        if found.name is not None:
            return found.name, f"{found.evidence} (scan + injection {time.monotonic() - started:.2f} s)"
        tried.append(found.evidence)
        avoid.add(target.pfn)
    raise TargetNotFound(f"the probe found no stable {probe['page_class']} page in {ATTEMPTS} tries: "
                         + "; ".join(tried))


def probe_command(target: Target, knob: str, recovery: str) -> str:
    """The host side: save, set, re-check the page, inject, read the line, restore (trap)."""
    k, r, h, pfn = sysctl_path(knob), sysctl_path(recovery), f"{DEBUGFS}/hwpoison", f"{target.pfn:#x}"
    return "; ".join([
        f"grep -q ' {DEBUGFS} debugfs ' /proc/mounts || mount -t debugfs debugfs {DEBUGFS} || exit 3",
        f"[ -e {h}/corrupt-pfn ] || modprobe hwpoison_inject || exit 3",
        f"ok=$(cat {k}) && or=$(cat {r}) && of=$(cat {h}/corrupt-filter-enable) || exit 3",
        f"trap 'echo $or > {r}; echo $ok > {k}; echo $of > {h}/corrupt-filter-enable; "
        f"echo restored $(cat {k}) $(cat {r}) $(cat {h}/corrupt-filter-enable)' EXIT",
        "trap 'exit 1' HUP INT TERM",
        f"echo 0 > {k} && echo 1 > {r} && echo 0 > {h}/corrupt-filter-enable || exit 4",
        f"[ \"$(cat {k})$(cat {r})$(cat {h}/corrupt-filter-enable)\" = 010 ] || exit 4",
        "echo saved $ok $or $of",
        # the page must still be what the scan saw; a freed slab page would say nothing
        f"[ \"$(dd if=/proc/kpageflags bs=8 skip={target.pfn} count=1 2>/dev/null | od -An -v -tx8 "
        f"| tr -d ' ')\" = {target.kpageflags:016x} ] || {{ echo changed; exit 5; }}",
        f"echo {pfn} > {h}/corrupt-pfn 2>/dev/null; echo rc $?",
        f"dmesg | grep -F 'Memory failure: {pfn}: recovery action for' | tail -n 1",
    ])


def read_answer(stdout: str, exit_code: int, target: Target, labels: dict[str, str]) -> Measured:
    """The semantics the action line names; None when the page changed first (try another)."""
    where = f"hwpoison-inject corrupt-pfn into slab pfn {target.pfn:#x} (kpageflags {target.kpageflags:#x})"
    saved = re.search(r"^saved (\S+) (\S+) (\S+)$", stdout, re.M)
    restored = re.search(r"^restored (\S+) (\S+) (\S+)$", stdout, re.M)
    if saved is None or exit_code in (3, 4):
        raise ProbeRefused(f"{where}: could not set the sysctls or the injector (exit {exit_code}): "
                           f"{stdout.strip()[-300:]}")
    if restored is None or restored.groups() != saved.groups():
        raise FatalInfraError(f"{where}: the sysctls were not put back (saved {saved.groups()}, now "
                              f"{restored.groups() if restored else 'unknown'}): check the host")
    if "changed" in stdout.split("\n"):
        return Measured(None, f"pfn {target.pfn:#x} changed before the write")
    line = _LINE.search(stdout)
    if line is None:
        return Measured(None, f"pfn {target.pfn:#x}: no recovery action line")
    name = labels.get(line["label"])
    quoted = f"{where} with the panic sysctl at 0: '{line.group(0)}'"
    return Measured(name, f"measured: {quoted} -> {name}" if name else f"pfn {target.pfn:#x}: {line.group(0)}")
