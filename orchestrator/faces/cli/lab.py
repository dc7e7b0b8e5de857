"""The ``orchestrator lab up|down|status|console|build`` argument parsing and printing; the
work itself is done by orchestrator.vlab.lab.lifecycle."""

from __future__ import annotations

import argparse

from orchestrator import paths
from orchestrator.vlab.lab import lifecycle as lab
from orchestrator.vlab.image.kernels import DEFAULT_FLAVOUR, KERNEL_FLAVOURS
from orchestrator.vlab.lab.checks import parse_kernel_list, ras_platform


def _cmd_up(args: argparse.Namespace) -> int:
    kernels = parse_kernel_list(args.kernels) if args.kernels else None
    kernel_args: dict[str, tuple[str, ...]] = {}
    for given in args.kernel_arg or ():
        name, _, arg = given.partition('=')
        kernel_args[name] = (*kernel_args.get(name, ()), arg)
    lab.lab_up(args.hosts, args.arch, kernels=kernels, ssh_port=args.ssh_port,
               bmc_port=args.bmc_port, kernel_args=kernel_args)
    return _cmd_status(args)


def _cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    rows = lab.lab_status()
    if not rows:
        print('lab is down')
        return 0
    table = Table(*rows[0], title=f'virtual lab ({paths.lab_dir()})')
    for row in rows:
        table.add_row(*row.values())
    Console().print(table)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from orchestrator.vlab.image.build import build_image  # ConfigError on an unknown arch/kernel
    build_image(args.arch, args.kernel, refresh=args.refresh, force=args.force)
    ras_platform(args.arch, 'the aarch64 RAS platform', print)   # QEMU 11 for GHES, cached beside the image
    return 0


def add_lab_commands(subparsers) -> None:
    """``orchestrator lab up|down|status|console|build``."""
    flavours = ' or '.join(KERNEL_FLAVOURS)
    parser = subparsers.add_parser('lab', help='the virtual lab: QEMU machines behind IPMI BMCs')
    sub = parser.add_subparsers(dest='lab_command', required=True, metavar='ACTION')
    up = sub.add_parser('up', help='start the lab (default: one x86_64 machine)')
    up.add_argument('--hosts', type=int,
                    help='machines per arch (default 1, or one per --kernels entry)')
    up.add_argument('--arch', default='x86_64',
                    help='x86_64 (default), aarch64, or both in one lab: x86_64,aarch64; '
                         'a count per arch: x86_64=2,aarch64=1')
    up.add_argument('--kernels', metavar='K1,K2,...',
                    help=f'guest kernel per machine of each arch, {flavours} (default: all '
                         f'{DEFAULT_FLAVOUR}); e.g. backports,bookworm = a 7.3 and a 6.1 machine')
    up.add_argument('--kernel-arg', action='append', metavar='MACHINE=ARG',
                    help='extra guest kernel argument for one machine, e.g. vlab-x86-2=lockdown=integrity')
    up.add_argument('--ssh-port', type=int, help='first SSH port (default: free ports)')
    up.add_argument('--bmc-port', type=int, help='first BMC UDP port (default: free ports)')
    up.set_defaults(func=_cmd_up)
    sub.add_parser('down', help='stop every machine and BMC').set_defaults(
        func=lambda args: lab.lab_down() or 0)
    sub.add_parser('status', help='table of machines').set_defaults(func=_cmd_status)
    console = sub.add_parser('console', help='interactive serial console (SOL); ~. leaves')
    console.add_argument('name')
    console.set_defaults(func=lambda args: lab.lab_console(args.name) or 0)
    build = sub.add_parser('build', help='build or reuse the guest image')
    build.add_argument('--arch', default='x86_64')
    build.add_argument('--kernel', default=DEFAULT_FLAVOUR, help=f'{flavours} (default {DEFAULT_FLAVOUR})')
    build.add_argument('--refresh', action='store_true', help='refresh the private apt lists')
    build.add_argument('--force', action='store_true', help='rebuild even if nothing changed')
    build.set_defaults(func=_cmd_build)
