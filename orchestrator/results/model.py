"""What a run produces, as plain frozen data. Writers (run.json, junit.xml, report.html)
read only these objects, so the schema lives in one place."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.errors import BLAMES, EXIT_FAIL, EXIT_INFRA, EXIT_NO_VERDICT, EXIT_OK  # noqa: F401 (BLAMES: the schema's values)

SCHEMA_VERSION = 1

#: Verdicts, never mixed up: "fail" always means the kernel, "error" always the lab.
PASS, FAIL, ERROR, SKIP = "pass", "fail", "error", "skip"
VERDICTS = (PASS, FAIL, ERROR, SKIP)
#: Worst first. A kernel failure is the news, then a lab error; a verdict no one knows
#: counts as the worst, so it is never hidden behind a pass.
SEVERITY = (FAIL, ERROR, SKIP, PASS)


def worst(verdicts: Iterable[str]) -> str:
    """The verdict that speaks for several results shown as one (reruns of one host x case)."""
    return min(verdicts, key=lambda v: SEVERITY.index(v) if v in SEVERITY else 0)


@dataclass(frozen=True)
class PhaseTiming:
    """One state of the per-case cycle: when it started, how long, how long waiting on the host."""

    state: str              # armed, injected, panicked, dumped, rebooted, verified, wedged, ...
    started: float          # seconds since the case started
    seconds: float
    waited: float           # part of ``seconds`` spent waiting on the host (not our overhead)
    note: str = ""


@dataclass(frozen=True)
class Evidence:
    """A line that supports (or contradicts) the verdict, and where it was seen."""

    source: str             # console | dmesg-live | dump-dmesg | vmcoreinfo | inject | ssh | bmc
    text: str
    t: float | None = None  # seconds since injection, where known


@dataclass(frozen=True)
class CaseResult:
    host: str
    case: str
    verdict: str                        # one of VERDICTS
    reasons: tuple[str, ...]            # why this verdict; for fail/error the first is the headline
    expect: dict                        # the resolved expectation (panic, action label/result, signature)
    pfn: int | None = None
    page_class: str | None = None
    injector: str | None = None
    timings: tuple[PhaseTiming, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    panic_after_inject_s: float | None = None
    dump: dict | None = None            # dump id, files and sizes, VMCOREINFO, incomplete flag
    boot_id_before: str | None = None
    boot_id_after: str | None = None
    recovery: tuple[str, ...] = ()      # BMC actions taken (nmi, power cycle) when the host wedged
    started_at: str = ""                # UTC ISO 8601
    seconds: float = 0.0
    artifacts: dict = field(default_factory=dict)   # name -> path relative to the run dir
    blame: str | None = None            # one of BLAMES for fail (always KERNEL) and error
    left_armed: bool = False            # the host could not be restored: it still has the case's sysctls


@dataclass(frozen=True)
class HostFacts:
    host: str
    arch: str
    platform: str
    kernel_release: str | None = None
    boot_id: str | None = None
    sysctls: dict = field(default_factory=dict)
    semantics: str | None = None
    semantics_evidence: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    error: str | None = None            # preflight failure, if any


@dataclass(frozen=True)
class RunResult:
    run_id: str
    started_at: str
    finished_at: str
    inventory_path: str
    inventory_digest: str
    playbook_path: str
    playbook_digest: str
    hosts: tuple[HostFacts, ...]
    cases: tuple[CaseResult, ...]
    controller: dict = field(default_factory=dict)   # version, python, peak RSS, CLI args
    schema_version: int = SCHEMA_VERSION

    def verdict_counts(self) -> dict[str, int]:
        """Cases per verdict, every verdict present (zero included), in VERDICTS order."""
        return {v: sum(c.verdict == v for c in self.cases) for v in VERDICTS}

    def left_armed(self) -> tuple[str, ...]:
        """Hosts that a case could not put back: they still carry its sysctls."""
        return tuple(sorted({c.host for c in self.cases if c.left_armed}))

    def exit_code(self) -> int:
        """0 all pass, 1 any fail (it is the news, even beside lab errors), 3 any error or a
        host left armed, 4 no case reached a verdict (all skipped: a nightly on a kernel
        without the sysctl must not look green). Statuses: orchestrator/errors.py."""
        verdicts = {c.verdict for c in self.cases}
        if FAIL in verdicts:
            return EXIT_FAIL
        if ERROR in verdicts or self.left_armed():
            return EXIT_INFRA
        if not verdicts & {PASS, FAIL, ERROR}:
            return EXIT_NO_VERDICT
        return EXIT_OK
