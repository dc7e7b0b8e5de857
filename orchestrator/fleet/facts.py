"""What a host says about itself when a run first reaches it: kernel, boot, the sysctls that
matter here, and its memory-failure semantics (probed without crashing anything)."""

from __future__ import annotations

from typing import Callable

from orchestrator.cycle.expectations import ExpectationResolver, probe_allowed
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import BOOT_FACTS_CMD, read_boot_facts, retry_until
from orchestrator.cycle.prefetch import PrefetchShell
from orchestrator.kernel.semantics import SemanticsUnknown
from orchestrator.kernel.semantics import files_command as semantics_files_command
from orchestrator.kernel.sysctl import read_command as sysctl_read_command, read_sysctls
from orchestrator.protocols.shell_batch import Section
from orchestrator.results.model import HostFacts
from orchestrator.tunables import HOST_FACTS_DEADLINE_S

WATCHED_SYSCTLS = ("vm.panic_on_unrecoverable_memory_failure", "vm.memory_failure_recovery",
                   "vm.memory_failure_early_kill", "kernel.panic")


def probe_host_facts(handles: HostHandles, resolver: ExpectationResolver, *,
                     may_inject: Callable[[], bool] = lambda: False) -> HostFacts:
    """``may_inject``: whether the slab semantics probe may run now (the host's lease is held);
    without it, only what the kernel's files and symbols (or the inventory) say is recorded."""
    # Read-only (the probe puts back what it changes), so retried: the run's first connections
    # meeting a late sshd banner (or an sshd refusing connections for a moment) lost the host
    # for the whole run at once.
    return retry_until(HOST_FACTS_DEADLINE_S, lambda _left: _probe_once(handles, resolver, may_inject),
                       sleep=handles.pause, on_retry=lambda _exc: handles.shell.close())


def _probe_once(handles: HostHandles, resolver: ExpectationResolver, may_inject: Callable[[], bool]) -> HostFacts:
    # one connection and one round trip for the first looks (a lab guest took ~0.3 s per
    # handshake and ~0.08 s per round trip; with 1,000 simulated hosts the run's last case
    # started seconds late behind every host's sequential first looks)
    shell = PrefetchShell(handles.shell)
    shell.prefetch([Section(BOOT_FACTS_CMD, 15), Section(sysctl_read_command(WATCHED_SYSCTLS)),
                    Section(semantics_files_command(), 60)])
    facts = read_boot_facts(shell)
    sysctls = read_sysctls(shell, WATCHED_SYSCTLS)
    host = handles.host
    try:
        semantics = resolver.probe(shell, per_boot=handles.per_boot, boot_id=facts.boot_id,
                                   may_inject=probe_allowed(host) and may_inject())
        name, evidence = semantics.name, semantics.evidence
    except SemanticsUnknown as exc:
        # recorded, not fatal: only `outcome: matrix` cases need it, and they say so
        name, evidence = None, (f"undetermined: {exc}",)
    return HostFacts(host=host.name, arch=host.arch, platform=host.platform,
                     kernel_release=facts.kernel_release, boot_id=facts.boot_id,
                     sysctls=dict(sysctls), semantics=name,
                     semantics_evidence=tuple(evidence), features=tuple(sorted(host.features)))
