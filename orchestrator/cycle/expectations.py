"""Resolving what a case expects on one host.

A case either states its expectation outright, or says ``outcome: matrix``: then the
host's kernel semantics are probed once (without crashing anything) and the expectation is
looked up in the semantics matrix (orchestrator/kernel/semantics.yaml). A kernel whose
semantics cannot be determined makes the case an error, never a guess.
"""

from __future__ import annotations

import threading

from orchestrator.config.playbook import Case, Expectation
from orchestrator.kernel import semantics
from orchestrator.kernel.injectors import injector
from orchestrator.protocols.shell import ShellProtocol


class ExpectationResolver:
    """Callable ``(case, shell) -> Expectation``; one per host (it caches the probe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._semantics: semantics.KernelSemantics | None = None

    @property
    def semantics(self) -> "semantics.KernelSemantics | None":
        return self._semantics

    def probe(self, shell: ShellProtocol) -> "semantics.KernelSemantics":
        """The host's semantics, probed once (crashes nothing); ``SemanticsUnknown`` if undeterminable."""
        with self._lock:
            if self._semantics is None:
                self._semantics = semantics.probe_semantics(shell)
            return self._semantics

    def __call__(self, case: Case, shell: ShellProtocol) -> Expectation:
        if case.expect.outcome != "matrix":
            return case.expect
        found = semantics.expectation(self.probe(shell), case.target, dict(case.sysctls),
                                      delivery=injector(case.injector).delivery)
        return Expectation(
            outcome="panic" if found.panic else "survive",
            action_label=case.expect.action_label or found.action_label,
            action_result=case.expect.action_result or found.action_result,
            signature=found.signature or "any",
            dump=case.expect.dump if found.panic else False,
            sel=case.expect.sel,
        )
