"""Which flavour of the panic option a kernel has, and what each case should then see.

The matrix lives in semantics.yaml (one commented row per semantics x page class); this module
decides a host's semantics without crashing it (files and symbols, the inventory's name for it,
or the measured slab probe of semantics_probe.py) and turns (semantics, page class, sysctls)
into an ``Expectation``. An undeterminable kernel raises ``SemanticsUnknown``: never a guess.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources

import yaml

from orchestrator.config.model import KERNEL_SEMANTICS
from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.kernel.sysctl import sysctl_path
from orchestrator.protocols.shell import ShellProtocol

SEMANTICS = KERNEL_SEMANTICS
#: How an injector's error reaches memory_failure() (kernel/injectors.py ``delivery``).
DELIVERIES = ("software", "machine-check")
#: Expectation.signature -> the panic kind orchestrator.kernel.signatures reports for it.
PANIC_KIND = {"new": "panic_mf", "legacy": "panic_legacy"}


class SemanticsUnknown(FatalInfraError):
    """The probe could not tell which semantics the kernel has."""


@dataclass(frozen=True)
class KernelSemantics:
    name: str
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Expectation:
    panic: bool
    action_label: str | None        # "recovery action for <label>: <result>"; None = not checked
    action_result: str | None
    signature: str | None           # "new" | "legacy" | None (no panic)
    reason: str


_MATRIX_LOCK = threading.Lock()


@functools.cache
def _matrix() -> dict:
    text = resources.files("orchestrator.kernel").joinpath("semantics.yaml").read_text()
    return yaml.safe_load(text)


def matrix() -> dict:
    """semantics.yaml, parsed once. Under a lock: functools.cache lets every thread that asks
    before the first answer parse it too (31 of 1,000 simulated hosts did, 2-5 s of CPU at
    the run's start, bench/bench_fleet.py)."""
    with _MATRIX_LOCK:
        return _matrix()


def probe_semantics(shell: ShellProtocol, *, named: str | None = None,
                    measure: Callable[[], tuple[str, str]] | None = None) -> KernelSemantics:
    """Decide from the sysctl files; then from ``named`` (the inventory's ``semantics:``); then
    by ``measure`` (the slab probe, semantics_probe.py) where the host allows it, else from
    /proc/kallsyms symbols. Never from the release string: a point release would change it."""
    out = shell.run(files_command(), timeout=60, check=False).stdout
    if "has-knob" in out.split() and (named is not None or measure is None):
        out += "\n" + _symbols(shell)
    return decide_semantics(out, named=named, measure=measure)


def files_command() -> str:
    """The first look ``probe_semantics`` takes (for protocols/shell_batch.py): the release and
    which of the two sysctl files the kernel has."""
    data = matrix()
    knob, recovery = sysctl_path(data["knob"]), sysctl_path(data["recovery_knob"])
    return f"uname -r; [ -e {recovery} ] && echo has-recovery; [ -e {knob} ] && echo has-knob"


def _symbols(shell: ShellProtocol) -> str:
    """``symbol NAME`` for each semantics.yaml symbol in /proc/kallsyms. grep -F first: busybox
    awk over kallsyms' ~200k lines took 5.0 s on a TCG lab guest, grep -F 1.25 s (cat alone
    0.67 s); awk then sees only the candidate lines. Measuring (0.5 s) needs none of it."""
    symbols = matrix()["symbols"]
    wanted = " || ".join(f'$3 == "{s}"' for s in symbols)
    fixed = " ".join(f"-e {s}" for s in symbols)
    return shell.run(f"grep -F {fixed} /proc/kallsyms | awk '{wanted} {{ print \"symbol\", $3 }}'",
                     timeout=60, check=False).stdout


def decide_semantics(probe_output: str, *, named: str | None = None,
                     measure: Callable[[], tuple[str, str]] | None = None) -> KernelSemantics:
    """The pure half of ``probe_semantics`` (first line: the kernel release)."""
    release, found, evidence = _read_files(probe_output)
    if named is not None:
        semantics_named(named)
        if found is not None and found != named:
            raise SemanticsUnknown(f"{release}: the inventory names {named} but the kernel says "
                                   f"{found}: {'; '.join(evidence)}")
        return KernelSemantics(named, (*evidence, f"named in the inventory (semantics: {named})"))
    if found is not None:
        return KernelSemantics(found, evidence)
    if measure is not None:
        name, how = measure()
        return KernelSemantics(name, (*evidence, how))
    raise SemanticsUnknown(
        f"{release} has {matrix()['knob']} but no symbol tells v4-like from v10-like and the slab "
        f"probe did not run (it runs on hosts with destructive: true and feature hwpoison_inject, "
        f"under the host's lease); name the semantics in the inventory: "
        f"semantics: {' | '.join(SEMANTICS)} on the host or group")


def _read_files(probe_output: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(release, the semantics the files and symbols prove or None, evidence)."""
    data = matrix()
    lines = probe_output.splitlines()
    release = lines[0].strip() if lines else "?"
    words = {line.strip() for line in lines[1:]}
    evidence = [f"kernel release {release}"]
    if "has-knob" not in words:
        if "has-recovery" in words:
            return release, "legacy", (*evidence, f"no {data['knob']}", f"{data['recovery_knob']} present")
        raise SemanticsUnknown(f"{release}: neither {data['knob']} nor {data['recovery_knob']}: "
                               "kernel without CONFIG_MEMORY_FAILURE?")
    evidence.append(f"{data['knob']} present")
    proofs = {data["symbols"][w.split()[1]] for w in words if w.startswith("symbol ")}
    for word in sorted(w for w in words if w.startswith("symbol ")):
        evidence.append(f"/proc/kallsyms has {word.split()[1]}")
    if len(proofs) > 1:
        raise SemanticsUnknown(f"{release}: contradicting symbols: {'; '.join(evidence)}")
    return release, (proofs.pop() if proofs else None), tuple(evidence)


def semantics_named(name: str, why: str = "set in the inventory") -> KernelSemantics:
    """For hosts whose kernel the probe cannot decide: the operator names the semantics."""
    if name not in SEMANTICS:
        raise ConfigError(f"unknown kernel semantics {name!r}; known: {', '.join(SEMANTICS)}")
    return KernelSemantics(name, (why,))


def expectation(semantics: KernelSemantics | str, page_class: str,
                sysctls: Mapping[str, str], *, delivery: str = "software") -> Expectation:
    """``delivery``: how the error reaches memory_failure() (the injector's ``delivery``);
    a class measured to behave differently on that path takes its row from ``deliveries``."""
    data = matrix()
    name = semantics if isinstance(semantics, str) else semantics.name
    if name not in SEMANTICS:
        raise ConfigError(f"unknown kernel semantics {name!r}; known: {', '.join(SEMANTICS)}")
    flavour = data["semantics"][name]
    if delivery not in DELIVERIES:
        raise ConfigError(f"unknown delivery {delivery!r}; known: {', '.join(DELIVERIES)}")
    if page_class not in flavour["classes"]:
        raise ConfigError(f"no expectation for page class {page_class!r} (an explicit pfn "
                          "needs the case to state its expected outcome)")
    if _value(sysctls, data["recovery_knob"]) == "0":
        return Expectation(True, None, None, "legacy",
                           f"{data['recovery_knob']}=0: memory_failure() panics before "
                           f"classifying the page, on every semantics")
    row = flavour["classes"][page_class]
    override = data.get("deliveries", {}).get(delivery, {}).get(name, {}).get(page_class)
    if override is not None:
        row = {**row, **override}
        name = f"{name} via {delivery}"
    enabled = _value(sysctls, data["knob"])
    if enabled not in (None, "0", "1"):
        raise ConfigError(f"{data['knob']} takes 0 or 1, not {enabled!r}")
    if enabled is not None and not flavour["has_knob"]:
        raise ConfigError(f"{name} kernels have no {data['knob']}")
    on = enabled == "1"
    panic = on and row["panics"]
    setting = f"{data['knob']}={enabled if enabled is not None else 'unset (default 0)'}"
    verdict = "panics" if panic else "survives"
    return Expectation(panic, row["label"], row["result"], "new" if panic else None,
                       f"{name}, {page_class}, {setting}: {verdict} "
                       f"({flavour['about'].split(':')[0]})")


def _value(sysctls: Mapping[str, str], name: str) -> str | None:
    value = sysctls.get(name)
    return None if value is None else str(value).strip()
