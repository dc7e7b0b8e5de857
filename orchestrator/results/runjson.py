"""run.json: the model objects as plain JSON, and back.

The file is the one durable record of a run; junit.xml and report.html are re-rendered
from it (``orchestrator report``). So the mapping must round-trip exactly:
``run_from_dict(json.loads(json.dumps(run_to_dict(run)))) == run`` for every run whose
free-form dict fields (expect, dump, sysctls, artifacts, controller) hold JSON values.

Reading is strict on purpose: a missing or unknown key raises instead of being guessed,
because a record that silently loses a field is worse than one that refuses to load.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any

from .percase import PerCase
from .model import (SCHEMA_VERSION, VERDICTS, CaseResult, Evidence, HostFacts, PhaseTiming,
                    RunResult)

#: Fields holding tuples of other model objects; everything else is a scalar, a dict or
#: a tuple of strings.
_NESTED: dict[type, dict[str, type]] = {
    RunResult: {"hosts": HostFacts, "cases": CaseResult},
    CaseResult: {"timings": PhaseTiming, "evidence": Evidence},
}


def run_to_dict(run: RunResult) -> dict[str, Any]:
    """The run as JSON-ready data, ``schema_version`` first so a reader sees it at once."""
    body = _plain(run)
    return {"schema_version": body.pop("schema_version"), **body}


def run_json(run: RunResult, cases: PerCase[str] | None = None) -> str:
    """``json.dumps(run_to_dict(run), indent=2)``, the same text, with each case's part made
    once per run (``cases``: from ``new_case_texts``, kept from one report to the next)."""
    cases = cases or new_case_texts()
    # stands where the cases go while the rest is encoded; no field of the run can hold it
    here = f"@@run-json-cases-{secrets.token_hex(8)}@@"
    body = run_to_dict(dataclasses.replace(run, cases=()))
    body["cases"] = here
    text = json.dumps(body, indent=2)
    listed = ",\n    ".join(cases.of(case) for case in run.cases)
    return text.replace(f'"{here}"', f"[\n    {listed}\n  ]" if run.cases else "[]", 1)


def new_case_texts() -> PerCase[str]:
    """Each case as run.json's cases list holds it (indented two levels deep)."""
    return PerCase(lambda case: json.dumps(case_to_dict(case), indent=2).replace("\n", "\n    "))


def run_from_dict(data: dict[str, Any]) -> RunResult:
    """Rebuild a RunResult. Raises ValueError (with the JSON path of the problem) when the
    data does not match schema version ``SCHEMA_VERSION``."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ValueError(f"schema_version {version!r} is not supported "
                         f"(this orchestrator reads version {SCHEMA_VERSION})")
    run = _build(RunResult, data, "$")
    for i, case in enumerate(run.cases):
        if case.verdict not in VERDICTS:
            raise ValueError(f"$.cases[{i}].verdict: {case.verdict!r} is not one of {', '.join(VERDICTS)}")
    return run


def case_to_dict(case: CaseResult) -> dict[str, Any]:
    """One case as JSON-ready data: a case's own result.json (a run's unit of progress)."""
    return _plain(case)


def case_from_dict(data: dict[str, Any]) -> CaseResult:
    case = _build(CaseResult, data, "$")
    if case.verdict not in VERDICTS:
        raise ValueError(f"$.verdict: {case.verdict!r} is not one of {', '.join(VERDICTS)}")
    return case


def _plain(value: Any) -> Any:
    """Model objects as dicts, tuples as lists (JSON has only lists), so the output is the
    same whether it goes through json.dumps or is compared as a dict. Not dataclasses.asdict:
    its deep copies made assembling a 1,000-case run.json the controller's main cost."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}")
    nested = _NESTED.get(cls, {})
    kwargs = {}
    for name, value in data.items():
        if name in nested:
            kwargs[name] = tuple(_build(nested[name], item, f"{where}.{name}[{i}]")
                                 for i, item in enumerate(_as_list(value, f"{where}.{name}")))
        elif str(fields[name].type).startswith("tuple"):
            kwargs[name] = tuple(_as_list(value, f"{where}.{name}"))
        else:
            kwargs[name] = value
    missing = sorted(name for name, f in fields.items() if name not in kwargs and _required(f))
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)} for {cls.__name__}")
    return cls(**kwargs)


def _as_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
