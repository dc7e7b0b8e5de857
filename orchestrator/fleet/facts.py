"""What a host says about itself when a run first reaches it: kernel, boot, the sysctls that
matter here, and its memory-failure semantics (probed without crashing anything)."""

from __future__ import annotations

from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import read_boot_facts, retry_until
from orchestrator.kernel.semantics import SemanticsUnknown
from orchestrator.kernel.sysctl import read_sysctls
from orchestrator.results.model import HostFacts
from orchestrator.tunables import HOST_FACTS_DEADLINE_S

WATCHED_SYSCTLS = ("vm.panic_on_unrecoverable_memory_failure", "vm.memory_failure_recovery",
                   "vm.memory_failure_early_kill", "kernel.panic")


def probe_host_facts(handles: HostHandles, resolver: ExpectationResolver) -> HostFacts:
    # Read-only, so retried: the run's first connections meeting a late sshd banner (or an
    # sshd refusing connections for a moment) lost the host for the whole run at once.
    return retry_until(HOST_FACTS_DEADLINE_S, lambda _left: _probe_once(handles, resolver),
                       sleep=handles.pause, on_retry=lambda _exc: handles.shell.close())


def _probe_once(handles: HostHandles, resolver: ExpectationResolver) -> HostFacts:
    facts = read_boot_facts(handles.poll_shell)
    sysctls = read_sysctls(handles.shell, WATCHED_SYSCTLS)
    host = handles.host
    try:
        semantics = resolver.probe(handles.shell)
        name, evidence = semantics.name, semantics.evidence
    except SemanticsUnknown as exc:
        # recorded, not fatal: only `outcome: matrix` cases need it, and they say so
        name, evidence = None, (f"undetermined: {exc}",)
    return HostFacts(host=host.name, arch=host.arch, platform=host.platform,
                     kernel_release=facts.kernel_release, boot_id=facts.boot_id,
                     sysctls=dict(sysctls), semantics=name,
                     semantics_evidence=tuple(evidence), features=tuple(sorted(host.features)))
