"""Resolving what a case expects on one host.

A case either states its expectation outright, or says ``outcome: matrix``: then the
host's kernel semantics are decided once per boot (without crashing anything: files and
symbols, the inventory's ``semantics:``, or the measured slab probe where the host allows it)
and the expectation is looked up in the semantics matrix (orchestrator/kernel/semantics.yaml).
A kernel whose semantics cannot be determined makes the case an error, never a guess.
"""

from __future__ import annotations

from orchestrator.config.model import Host
from orchestrator.config.playbook import Case, Expectation
from orchestrator.cycle.handles import PerBoot
from orchestrator.kernel import firmware_reports, semantics, semantics_probe
from orchestrator.kernel.facts import probe_facts
from orchestrator.kernel.target import TargetNotFound
from orchestrator.kernel.injectors import injector
from orchestrator.protocols.shell import ShellProtocol

#: The probe injects (a harmless, simulated error): only on hosts open to injection at all,
#: with the injector it uses.
PROBE_FEATURE = "hwpoison_inject"


def probe_allowed(host: Host | None) -> bool:
    return host is not None and host.destructive and PROBE_FEATURE in host.features


class ExpectationResolver:
    """Callable ``(case, shell, ...) -> Expectation``; one per host."""

    def __init__(self, host: Host | None = None) -> None:
        self.host = host
        self._last: semantics.KernelSemantics | None = None

    @property
    def semantics(self) -> "semantics.KernelSemantics | None":
        return self._last

    def probe(self, shell: ShellProtocol, *, per_boot: PerBoot | None = None, boot_id: str | None = None,
              may_inject: bool = True) -> "semantics.KernelSemantics":
        """The host's semantics for boot ``boot_id``, decided once per boot (the slab probe only
        with ``may_inject``, where the inventory allows it); ``SemanticsUnknown`` if undeterminable."""
        inject = may_inject and probe_allowed(self.host) and per_boot is not None and boot_id is not None
        if not inject:
            found = semantics.probe_semantics(shell, named=self._named())
        else:
            found = per_boot.get(boot_id, "semantics", lambda: self._decided(shell, per_boot, boot_id))
            if isinstance(found, Exception):
                raise found              # a failed probe is not repeated for every case of the boot
        self._last = found
        return found

    def _named(self) -> str | None:
        return self.host.semantics if self.host is not None else None

    def _decided(self, shell, per_boot: PerBoot, boot_id: str) -> "semantics.KernelSemantics | Exception":
        def measure() -> tuple[str, str]:
            kernel = probe_facts(shell)     # not per_boot.get: its lock is held while this runs
            data = semantics.matrix()
            return semantics_probe.measure(shell, data["probe"], data["knob"], data["recovery_knob"],
                                           arch=kernel.arch, page_size=kernel.page_size)
        try:
            return semantics.probe_semantics(shell, named=self._named(), measure=measure)
        except (semantics_probe.ProbeRefused, TargetNotFound) as exc:
            return semantics.SemanticsUnknown(f"the slab probe could not decide: {exc}")
        except semantics.SemanticsUnknown as exc:
            return exc

    def __call__(self, case: Case, shell: ShellProtocol, *, per_boot: PerBoot | None = None,
                 boot_id: str | None = None, record=None) -> Expectation:
        if case.expect.outcome != "matrix":
            return case.expect
        kernel = self.probe(shell, per_boot=per_boot, boot_id=boot_id)
        if record is not None:
            record.add_evidence("semantics", f"{kernel.name}: {'; '.join(kernel.evidence)}")
        found = semantics.expectation(kernel, case.target, dict(case.sysctls),
                                      delivery=injector(case.injector).delivery)
        return firmware_reports.for_case(case, Expectation(
            outcome="panic" if found.panic else "survive",
            action_label=case.expect.action_label or found.action_label,
            action_result=case.expect.action_result or found.action_result,
            signature=found.signature or "any",
            dump=case.expect.dump if found.panic else False,
            sel=case.expect.sel,
        ))
