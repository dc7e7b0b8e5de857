"""What a ``lab up`` request means: the arch and guest kernel of every machine, and the
machines' names. One arch, or several in one lab (``--arch x86_64,aarch64``: a mixed lab,
one inventory, one ``orchestrator run`` drives both arches in parallel)."""

from __future__ import annotations

from orchestrator.errors import ConfigError
from orchestrator.vlab.lab.checks import QEMU_BINARIES, machine_kernels

NAME_PREFIXES = {'x86_64': 'vlab-x86', 'aarch64': 'vlab-arm'}
Plan = tuple[tuple[str, str], ...]       # (arch, kernel) per machine


def lab_plan(arch: str, hosts: int | None,
             kernels: tuple[str, ...] | None) -> Plan:
    """``(arch, kernel)`` of every machine, arch by arch in the order given. ``arch`` is one
    arch or several (``x86_64,aarch64``: a mixed lab), each optionally with its own machine
    count (``x86_64=2,aarch64=1``). ``hosts`` and ``kernels`` describe EACH arch's machines,
    so ``--arch x86_64,aarch64 --hosts 2`` is four machines."""
    plan: list[tuple[str, str]] = []
    for name, count in parse_arch_spec(arch):
        if count is not None and hosts is not None:
            raise ConfigError(f'--arch {name}={count} and --hosts {hosts}: give the count once',
                              field='--hosts')
        asked = f'--hosts {hosts}' if count is None else f'--arch {name}={count}'
        plan += [(name, k) for k in machine_kernels(hosts if count is None else count, kernels, asked)]
    return tuple(plan)


def parse_arch_spec(text: str) -> tuple[tuple[str, int | None], ...]:
    """``x86_64,aarch64=2`` -> (('x86_64', None), ('aarch64', 2)), checked."""
    entries: dict[str, int | None] = {}
    for part in text.split(','):
        name, has_count, count = (s.strip() for s in part.partition('='))
        if name not in QEMU_BINARIES:
            raise ConfigError(f'unknown arch {name!r} in {text!r} (use x86_64, aarch64 or '
                              f'both: x86_64,aarch64, each optionally =N machines)', field='--arch')
        if name in entries:
            raise ConfigError(f'{text!r} names {name} twice', field='--arch')
        if has_count and not (count.isdigit() and int(count) >= 1):
            raise ConfigError(f'{name}={count!r} in {text!r} is not a machine count of 1 or more',
                              field='--arch')
        entries[name] = int(count) if has_count else None
    return tuple(entries.items())


def machine_slots(plan: Plan) -> list[tuple[str, str, str]]:
    """(name, arch, kernel): vlab-x86-1, vlab-x86-2, vlab-arm-1..., numbered within each arch."""
    return [(f'{NAME_PREFIXES[arch]}-{sum(a == arch for a, _ in plan[:index]) + 1}', arch, kernel)
            for index, (arch, kernel) in enumerate(plan)]
