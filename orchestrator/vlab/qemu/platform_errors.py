"""The lab machine's platform firmware reporting a memory error: one function per error path.

The BMC (vlab/bmc/firmware_requests.py) receives the request; this module turns it into what
a real platform would raise, through the machine's QMP: a machine check on x86 ("mce"), a
CPER record through GHES on arm64 RAS machines ("ghes"). Each path registers itself in
``PATHS`` from its own module (mce.py, ...), imported below; a path a machine lacks is
``UnsupportedOperation``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from orchestrator.errors import UnsupportedOperation


class QmpMachine(Protocol):
    def qmp(self, command: str, **arguments: Any) -> Any: ...


#: path -> raise(machine, spec, phys_addr, severity); spec is the machine's MachineSpec
PATHS: dict[str, Callable[..., None]] = {}
#: called after every error the firmware raised: (spec, phys_addr, path, severity) — what a
#: real platform also writes into its BMC's SEL
LISTENERS: list[Callable[..., None]] = []


def report_memory_error(machine: QmpMachine, spec: Any, phys_addr: int, path: str, severity: str) -> None:
    raiser = PATHS.get(path)
    if raiser is None:
        raise UnsupportedOperation(f"no {path!r} firmware error path on lab machine {spec.name}")
    raiser(machine, spec, phys_addr, severity)
    for listener in LISTENERS:
        listener(spec, phys_addr, path, severity)
