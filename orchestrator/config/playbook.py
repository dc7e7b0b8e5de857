"""Playbook YAML -> frozen ``Playbook`` of ``Case``s.

A case names an injector, a target page class (or an explicit pfn), the sysctls to set,
what to expect, deadlines per cycle state, and optional limits to arches/platforms/features.
``expect.outcome: matrix`` resolves the expectation per host from the kernel semantics
matrix (orchestrator/kernel/semantics.yaml) instead of hard-coding one kernel's behaviour.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from orchestrator.config.model import ARCHES
from orchestrator.config.yamlsrc import Fields, LocDict, UniqueNames, deep_merge, describe, load_located
from orchestrator.errors import ConfigError

INJECTORS = ("hwpoison_inject", "hard_offline_page", "einj", "einj_fatal", "mce_inject", "qemu_mce")
#: firmware-first reports through GHES, one injector per CPER severity (kernel/injectors.py)
INJECTORS += ("ghes", "ghes_fatal", "ghes_corrected")
#: the inventory feature that declares an injector usable, where it is not the injector's name
#: (kernel/injectors.py ``feature``): both EINJ types need only a platform that offers EINJ,
#: every GHES severity only a platform whose firmware reports through GHES
INJECTOR_FEATURES = {"einj_fatal": "einj", "ghes_fatal": "ghes", "ghes_corrected": "ghes"}
PAGE_CLASSES = ("kernel-rodata", "kernel-text", "kernel-data", "reserved-low", "slab", "pgtable",
                "free-buddy", "user-anon", "user-file")
OUTCOMES = ("panic", "survive", "matrix")
#: the panic a case expects: the new or legacy memory-failure panic, either, or a fatal machine
#: check (a fatal error the platform raised, e.g. EINJ 0x20: no memory_failure(), no pfn), or
#: GHES's own panic on a fatal firmware-first report ("GHES: Fatal hardware error", no pfn)
SIGNATURES = ("new", "legacy", "any", "machine-check", "ghes_fatal")
KDUMP_MODES = ("required", "unload", "any")

#: Seconds each cycle state may take before the case ends (TCG lab numbers x ~3 headroom).
DEFAULT_DEADLINES = {
    "preflight": 180.0,   # SSH up, kdump armed (kexec -p takes ~10 s under TCG)
    "arm": 30.0,
    "target": 120.0,      # scanning /proc/kpageflags with dd|od|awk is slow under TCG
    "inject": 30.0,
    "panic": 60.0,        # injection -> panic line on the console
    "dump": 240.0,        # panic -> host back on SSH with a new boot_id (kdump + reboot)
    "wedge": 300.0,       # bounded recovery through the BMC (NMI, power cycle, boot)
    "nmi": 45.0,          # after an NMI, time a kdump-capable host gets to dump and reboot itself
    "survive": 20.0,      # how long a survive case waits for its injection to return (a panic ends it)
    "collect": 60.0,
    "restore": 30.0,
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SYSCTL_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")


@dataclass(frozen=True)
class Expectation:
    outcome: str                        # panic | survive | matrix
    action_label: str | None = None     # "recovery action for <label>: <result>"
    action_result: str | None = None
    signature: str = "any"              # new | legacy | any | machine-check (panic cases)
    dump: bool = True                   # a panic case needs a kdump dump unless false
    memory_failure: bool = True         # false: the kernel must not run memory_failure() on the page
    #: texts the BMC's SEL must show among the case's records (or in the kernel's panic text
    #: reassembled from them), e.g. ("OS Critical Stop", "Memory"); cycle/sel_window.py
    sel: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    arches: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    features: tuple[str, ...] = ()     # every listed feature must be declared by the host
    sysctls_present: tuple[str, ...] = ()  # skip (with reason) when the kernel lacks them


@dataclass(frozen=True)
class Case:
    name: str
    injector: str
    target: str                         # a page class, or "pfn"
    pfn: int | None
    sysctls: tuple[tuple[str, str], ...]
    expect: Expectation
    limits: Limits
    deadlines: dict = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    kdump: str = "required"             # required | unload (wedge test) | any
    description: str = ""
    origin: str = ""


@dataclass(frozen=True)
class Playbook:
    path: Path
    name: str
    cases: tuple[Case, ...]
    digest: str

    def select(self, names: tuple[str, ...]) -> "Playbook":
        unknown = [n for n in names if n not in {c.name for c in self.cases}]
        if unknown:
            raise ConfigError(f"no such case(s): {', '.join(unknown)} (the playbook has: "
                              f"{', '.join(c.name for c in self.cases)})", path=str(self.path))
        return replace(self, cases=tuple(c for c in self.cases if c.name in names))


def load_playbook(path: Path | str) -> Playbook:
    path = Path(path)
    data, raw = load_located(path)
    top = Fields(data, path, "")
    top.reject_unknown({"version", "name", "description", "defaults", "cases"})
    version = top.get("version", int, 1)
    if version != 1:
        raise top.error("version", f"unsupported playbook version {version} (this orchestrator reads version 1)")
    defaults = top.get("defaults", dict, LocDict())
    if not top.get("cases", list):
        raise top.error("cases", "a playbook needs at least one case")
    cases, names = [], UniqueNames(path, "case")
    for where, line, item in top.mappings("cases", "case"):
        case = _build_case(Fields(deep_merge(defaults, item), path, where, line))
        names.add(case.name, line=line, field=f"{where}.name")
        cases.append(case)
    return Playbook(path=path, name=top.get("name", str, path.stem), cases=tuple(cases),
                    digest=hashlib.sha256(raw).hexdigest())


def build_case(data: dict, where: str) -> Case:
    """One case from a mapping written in code (the pytest face's inline cases), checked as a
    playbook's would be; ``where`` names it in errors (a test's file and line)."""
    return _build_case(Fields(data, Path(where), "case"))


def _build_case(f: Fields) -> Case:
    f.reject_unknown({"name", "description", "injector", "target", "sysctls", "expect", "limit", "deadlines", "kdump"})
    name = f.get("name", str)
    if not _NAME_RE.match(name):
        raise f.error("name", f"{name!r} is not a valid case name (letters, digits, '.', '_', '-')")
    target, pfn = _build_target(f)
    kdump = f.get("kdump", str, "required", choices=KDUMP_MODES)
    expect = _build_expect(f, kdump)
    if expect.outcome == "matrix" and target == "pfn":
        raise f.error("target", "an explicit pfn has no page class to look up in the semantics matrix; "
                                "state the expectation (panic or survive)")
    return Case(
        name=name, injector=f.get("injector", str, choices=INJECTORS), target=target, pfn=pfn,
        sysctls=_build_sysctls(f), expect=expect, limits=_needs_sel(_build_limits(f), expect),
        deadlines=_build_deadlines(f), kdump=kdump,
        description=f.get("description", str, ""), origin=f"{f.path}:{f.line}",
    )


def _build_target(f: Fields) -> tuple[str, int | None]:
    raw = f.get("target", (str, dict))
    if isinstance(raw, str):
        if raw not in PAGE_CLASSES:
            raise f.error("target", f"unknown page class {raw!r} (known: {', '.join(PAGE_CLASSES)}, or {{pfn: N}})")
        return raw, None
    sub = f.sub("target")
    sub.reject_unknown({"pfn"})
    pfn = sub.get("pfn", (int, str))
    if isinstance(pfn, str):
        try:
            pfn = int(pfn, 0)
        except ValueError:
            raise sub.error("pfn", f"{pfn!r} is not a number (write a page frame number as 0x1234 or 4660)")
    if pfn < 0:
        raise sub.error("pfn", "must not be negative")
    return "pfn", pfn


def _build_sysctls(f: Fields) -> tuple[tuple[str, str], ...]:
    sub = f.sub("sysctls", None)
    if sub is None:
        return ()
    out = []
    for key, value in sub.data.items():
        if not isinstance(key, str) or not _SYSCTL_RE.match(key):
            raise sub.error(key, "not a sysctl name (dotted, like vm.memory_failure_recovery)")
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise sub.error(key, f"value must be an integer or a string, got {describe(value)}")
        out.append((key, str(value)))
    return tuple(out)


def _build_expect(f: Fields, kdump: str) -> Expectation:
    sub = f.sub("expect")
    sub.reject_unknown({"outcome", "action", "signature", "dump", "memory_failure", "sel"})
    outcome = sub.get("outcome", str, choices=OUTCOMES)
    label = result = None
    action = sub.sub("action", None)
    if action is not None:
        action.reject_unknown({"label", "result"})
        label = action.get("label", str, None)
        result = action.get("result", str, None, choices=("Ignored", "Failed", "Delayed", "Recovered"))
    signature = sub.get("signature", str, "any", choices=SIGNATURES)
    if outcome == "survive" and "signature" in sub.data:
        raise sub.error("signature", "a survive case expects no panic, so it has no signature")
    dump = sub.get("dump", bool, outcome != "survive" and kdump != "unload")
    if dump and kdump == "unload":
        raise sub.error("dump", "kdump: unload leaves no crash kernel to write a dump; set dump: false")
    sel = sub.str_list("sel")
    if any(not text.strip() for text in sel):
        raise sub.error("sel", "each SEL text must be non-empty (a part of a record, e.g. 'OS Critical Stop')")
    return Expectation(outcome=outcome, action_label=label, action_result=result, signature=signature, dump=dump,
                       memory_failure=sub.get("memory_failure", bool, True), sel=sel)


def _needs_sel(limits: Limits, expect: Expectation) -> Limits:
    """A case that expects SEL records runs only on hosts whose BMC keeps a SEL."""
    if not expect.sel or "sel" in limits.features:
        return limits
    return replace(limits, features=limits.features + ("sel",))


def _build_limits(f: Fields) -> Limits:
    sub = f.sub("limit", None)
    if sub is None:
        return Limits()
    sub.reject_unknown({"arches", "platforms", "features", "sysctls_present"})
    arches = sub.str_list("arches")
    for arch in arches:
        if arch not in ARCHES:
            raise sub.error("arches", f"unknown arch {arch!r} (known: {', '.join(ARCHES)})")
    present = sub.str_list("sysctls_present")
    for name in present:
        if not _SYSCTL_RE.match(name):
            raise sub.error("sysctls_present", f"{name!r} is not a sysctl name (dotted, like vm.memory_failure_recovery)")
    return Limits(arches=arches, platforms=sub.str_list("platforms"), features=sub.str_list("features"),
                  sysctls_present=present)


def _build_deadlines(f: Fields) -> dict:
    out = dict(DEFAULT_DEADLINES)
    sub = f.sub("deadlines", None)
    if sub is None:
        return out
    sub.reject_unknown(set(DEFAULT_DEADLINES))
    for key in sub.data:
        value = sub.get(key, float)
        if not math.isfinite(value) or value <= 0:
            raise sub.error(key, f"deadline must be positive seconds, got {value}")
        out[key] = value
    return out
