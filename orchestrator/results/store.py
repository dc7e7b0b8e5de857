"""The run directory on disk: where every file of a run is written, and how it is read back.

    results/<run_id>/                run_id = <UTC YYYYmmddTHHMMSSZ>-<6 hex>
      run.json  junit.xml  report.html
      <host>/<case>/                 console.log, commands.log, dmesg, metadata.json, ...

Every file is written atomically (temp file in the same folder, fsync, rename), because a
run usually ends with a power cycle somewhere nearby and the controller can be killed at
any moment: a reader must see the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import LAB, ConfigError, FatalInfraError
from .html import new_sections, report_html, section_id
from .junit import junit_xml
from .model import CaseResult, RunResult
from .percase import PerCase
from .runjson import case_from_dict, case_to_dict, new_case_texts, run_from_dict, run_json

RUN_JSON, JUNIT_XML, REPORT_HTML = "run.json", "junit.xml", "report.html"
#: What was asked (inventory, playbook, selection), written once when the run starts; with the
#: cases' own result.json files it is all a resumed run or a fleet worker needs.
REQUEST_JSON, CASE_JSON = "run-request.json", "result.json"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def new_run_dir(base: Path, *, now: datetime | None = None) -> tuple[str, Path]:
    """Create ``<base>/<run_id>/``. The random suffix keeps two runs started in the same
    second (two CI jobs on one controller) apart; mkdir without exist_ok proves it."""
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    base.mkdir(parents=True, exist_ok=True)
    while True:
        run_id = f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        try:
            (base / run_id).mkdir()
        except FileExistsError:
            continue
        return run_id, base / run_id


def safe_name(name: str) -> str:
    """A single path component: host and case names come from YAML and may hold '/', '..'
    or spaces; none of them may steer a write outside the run directory."""
    cleaned = _UNSAFE.sub("_", name).strip(".")
    return cleaned or "_"


def case_dir(run_dir: Path, host: str, case: str) -> Path:
    path = run_dir / safe_name(host) / safe_name(case)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsWriteError(path, exc) from None
    return path


class ResultsWriteError(FatalInfraError):
    """The results folder refused a write (full, read-only, gone). The file it was meant to
    replace is untouched; a run stops starting cases it could not record."""

    def __init__(self, path: Path, exc: OSError):
        super().__init__(f"cannot write {path}: {exc.strerror or exc}", blame=LAB)
        self.path = path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Old file or new file, never half of one; a refused write is a ``ResultsWriteError``
    (an OSError from deep in a host thread would read as this program's bug)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        _replace_atomically(path, payload)
    except OSError as exc:
        raise ResultsWriteError(path, exc) from None
    _fsync_dir(path.parent)


def _replace_atomically(path: Path, payload: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)       # mkstemp makes 0600; results are meant to be shared
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable. Best effort: not every filesystem allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ReportParts:
    """Each finished case's part of run.json and report.html, kept from one report of a run
    to the next (results/percase.py)."""

    case_json: PerCase[str] = field(default_factory=new_case_texts)
    sections: PerCase = field(default_factory=new_sections)

    def prepare(self, case: CaseResult) -> None:
        """A case's parts made as it finishes, on the thread that ran it, instead of by the
        run's next report: the last report waits for every part not made yet (~1 ms a case,
        ~1 s when 1,000 simulated hosts finish together; bench/bench_fleet.py)."""
        self.case_json.of(case)
        self.sections.of(case, section_id(case))


def write_run(run_dir: Path, run: RunResult, parts: ReportParts | None = None) -> dict[str, Path]:
    """run.json first: if a renderer has a bug, the record that can re-render it is safe."""
    parts = parts or ReportParts()
    paths = {RUN_JSON: run_dir / RUN_JSON}
    write_atomic(paths[RUN_JSON], run_json(run, parts.case_json) + "\n")
    paths.update(render_reports(run_dir, run, parts))
    return paths


def render_reports(run_dir: Path, run: RunResult, parts: ReportParts | None = None) -> dict[str, Path]:
    paths = {JUNIT_XML: run_dir / JUNIT_XML, REPORT_HTML: run_dir / REPORT_HTML}
    write_atomic(paths[JUNIT_XML], junit_xml(run))
    write_atomic(paths[REPORT_HTML], report_html(run, parts.sections if parts else None))
    return paths


def load_run(run_dir: Path) -> RunResult:
    path = Path(run_dir) / RUN_JSON
    try:
        return run_from_dict(_read_json(path, "no run.json here (is this a run directory?)"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), path=str(path)) from None


def _read_json(path: Path, missing: str):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(missing, path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc.msg} (column {exc.colno})", path=str(path),
                          line=exc.lineno) from None


def write_request(run_dir: Path, request: dict) -> None:
    write_atomic(run_dir / REQUEST_JSON, json.dumps(request, indent=2, sort_keys=True) + "\n")


def read_request(run_dir: Path) -> dict:
    return _read_json(Path(run_dir) / REQUEST_JSON, "no run-request.json here (is this a run directory?)")


def write_case_result(run_dir: Path, result: CaseResult) -> Path:
    """A finished case's own record: the unit a resumed run or another worker builds on."""
    path = case_dir(run_dir, result.host, result.case) / CASE_JSON
    # one line: json's C encoder only runs without indent, and indenting made writing each
    # case's result a third of the controller's CPU per case with 1,000 simulated hosts
    write_atomic(path, json.dumps(case_to_dict(result)) + "\n")
    return path


def load_case_results(run_dir: Path) -> list[CaseResult]:
    """Every finished case of the run folder, oldest first; a record that cannot be read is
    bad input naming its file (never silently dropped)."""
    results = []
    for path in sorted(Path(run_dir).glob(f"*/*/{CASE_JSON}")):
        try:
            results.append(case_from_dict(_read_json(path, "missing")))
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc), path=str(path)) from None
    return sorted(results, key=lambda r: r.started_at)
