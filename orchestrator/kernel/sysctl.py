"""Reading and writing sysctls through /proc/sys (no sysctl(8) needed on the host)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping

from orchestrator.errors import ConfigError, FatalInfraError
from orchestrator.protocols.shell import ShellProtocol

_NAME = re.compile(r"^[A-Za-z0-9_-]+([./][A-Za-z0-9_-]+)+$")
PROC_SYS = "/proc/sys"          # tests point it at a folder of their own


class SysctlRefused(FatalInfraError):
    """The kernel refused a sysctl write (absent, out of range, or not permitted)."""


def sysctl_path(name: str) -> str:
    """``vm.panic_on_unrecoverable_memory_failure`` -> ``/proc/sys/vm/panic_on_...``."""
    if not _NAME.match(name):
        raise ConfigError(f"not a sysctl name: {name!r}")
    return f"{PROC_SYS}/" + name.replace(".", "/")


def read_sysctls(shell: ShellProtocol, names: Iterable[str]) -> dict[str, str | None]:
    """Current values (whitespace-normalised first line), None where the sysctl is absent."""
    names = list(names)
    if not names:
        return {}
    out = shell.run(read_command(names), timeout=30).stdout
    return parse_sysctl_lines(out, names)


def read_command(names: Iterable[str]) -> str:
    """The one command ``read_sysctls`` runs (for protocols/shell_batch.py); "" for no names.
    One line per name: "name<TAB>value" (values may hold tabs), or "name absent"."""
    return "; ".join(
        f"if [ -e {sysctl_path(n)} ]; then printf '%s\\t' {n}; head -n 1 {sysctl_path(n)}; "
        f"else echo '{n} absent'; fi" for n in names)


def parse_sysctl_lines(text: str, names: Iterable[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("\t")
        if sep:
            values[name] = " ".join(value.split())
        elif line.endswith(" absent"):
            values[line[:-len(" absent")]] = None
    missing = [n for n in names if n not in values]
    if missing:
        raise FatalInfraError(f"sysctl read gave no line for {', '.join(missing)}: {text!r}")
    return {n: values[n] for n in names}


def write_command(values: Mapping[str, str]) -> str:
    """The write ``write_sysctls`` runs before reading the values back (for protocols/shell_batch.py)."""
    return "; ".join(
        f"printf '%s\\n' {shlex.quote(str(v))} > {sysctl_path(n)} || echo \"refused {n}\" >&2"
        for n, v in values.items())


def equal_test(name: str, value: str) -> str:
    """A sh test that holds when the sysctl's value is ``value`` (whitespace normalised as
    ``read_sysctls`` does: ``set --`` splits it into words that ``$*`` joins with one space)."""
    path = sysctl_path(name)
    return f"[ -e {path} ] && ( set -f; set -- $(head -n 1 {path}); [ \"$*\" = {shlex.quote(' '.join(str(value).split()))} ] )"


def write_sysctls(shell: ShellProtocol, values: Mapping[str, str]) -> None:
    """Write each value, then read all back: a value the kernel clamps or ignores is a refusal
    too. Raises ``SysctlRefused`` naming every sysctl that did not take its value."""
    if not values:
        return
    result = shell.run(write_command(values), timeout=30, check=False)
    now = read_sysctls(shell, values)
    wrong = {n: now[n] for n, v in values.items() if now[n] != " ".join(str(v).split())}
    if wrong:
        detail = ", ".join(f"{n}={values[n]!r} (now {'absent' if now[n] is None else repr(now[n])})"
                           for n in wrong)
        raise SysctlRefused(f"sysctl write refused: {detail}; {result.stderr.strip()}")
