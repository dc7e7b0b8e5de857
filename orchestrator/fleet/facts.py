"""What a host says about itself when a run first reaches it: kernel, boot, the sysctls that
matter here, and its memory-failure semantics (probed without crashing anything)."""

from __future__ import annotations

from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import wait_for_boot
from orchestrator.kernel.semantics import SemanticsUnknown
from orchestrator.kernel.sysctl import read_sysctls
from orchestrator.results.model import HostFacts
from orchestrator.tunables import HOST_FACTS_DEADLINE_S

WATCHED_SYSCTLS = ("vm.panic_on_unrecoverable_memory_failure", "vm.memory_failure_recovery",
                   "vm.memory_failure_early_kill", "kernel.panic")


def probe_host_facts(handles: HostHandles, resolver: ExpectationResolver) -> HostFacts:
    # Waited for, not one probe: the run's first connection meeting a late sshd banner
    # (2 s on the poll shell) lost the host for the whole run before anything was done.
    facts = wait_for_boot(handles.poll_shell, deadline_s=HOST_FACTS_DEADLINE_S, state="host facts",
                          sleep=handles.pause)
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
