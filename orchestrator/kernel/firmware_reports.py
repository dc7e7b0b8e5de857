"""What a case expects when the platform's firmware reports the error (a ``FirmwareInjector``):
the severity of the report comes first (semantics.yaml ``firmware_reports``). A recoverable
GHES report reaches memory_failure() like any injection, so the semantics matrix applies as
resolved; a fatal one panics in the GHES handler with its own signature before memory_failure()
could run; a corrected one never reaches memory_failure() at all.
"""

from __future__ import annotations

from dataclasses import replace

from orchestrator.config.playbook import Case, Expectation
from orchestrator.errors import ConfigError
from orchestrator.kernel.injectors import FirmwareInjector, injector
from orchestrator.kernel.semantics import matrix


def report_row(path: str, severity: str) -> dict:
    try:
        return matrix()["firmware_reports"][path][severity]
    except KeyError:
        raise ConfigError(f"the semantics matrix says nothing about {severity} {path} reports") from None


def for_case(case: Case, resolved: Expectation) -> Expectation:
    """``resolved`` (the matrix's expectation for the case's page class and sysctls) as the
    report's severity changes it; unchanged for injectors that write on the host."""
    inj = injector(case.injector)
    if not isinstance(inj, FirmwareInjector) or inj.path not in matrix().get("firmware_reports", {}):
        return resolved          # a path without rows (mce) is judged by its delivery alone
    row = report_row(inj.path, inj.severity)
    if row["panic"]:
        return replace(resolved, outcome="panic", action_label=None, action_result=None,
                       signature=row["panic"], dump=case.expect.dump, memory_failure=row["memory_failure"])
    if not row["memory_failure"]:
        return replace(resolved, outcome="survive", action_label=None, action_result=None,
                       signature="any", dump=False, memory_failure=False)
    return resolved
