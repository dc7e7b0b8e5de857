"""Reading a dump file's own headers on the host, a few bytes at a time (kernel/kdump.py):
VMCOREINFO from a kdump-compressed or ELF vmcore when no text copy was saved beside it."""

from __future__ import annotations

import shlex

from orchestrator.kernel import vmcoreinfo as vmci
from orchestrator.protocols.shell import ShellProtocol
from orchestrator.tunables import KDUMP_COMMAND_TIMEOUT_S

_HEAD_BYTES = 8192             # kdump header block + sub-header, or ELF header + phdrs


def read_bytes(shell: ShellProtocol, path: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of a host file (fewer at its end), through dd + od, which
    every host has (base64 is not guaranteed)."""
    first, last = offset // 512, -(-(offset + size) // 512)
    out = shell.run(f"dd if={shlex.quote(path)} bs=512 skip={first} count={last - first} "
                    f"2>/dev/null | od -An -v -tx1", timeout=KDUMP_COMMAND_TIMEOUT_S).stdout
    data = bytes.fromhex("".join(out.split()))
    return data[offset - first * 512:offset - first * 512 + size]


def vmcoreinfo_from_dump(shell, path, notes) -> tuple[dict[str, str], bool]:
    """(VMCOREINFO, incomplete-by-header) read from the dump file itself."""
    try:
        head = read_bytes(shell, path, 0, _HEAD_BYTES)
        kind = vmci.dump_format(head)
        if kind == "kdump":
            block_size = vmci.kdump_block_size(head)
            if block_size + 64 > len(head):
                head = read_bytes(shell, path, 0, block_size + 64)
            header = vmci.parse_kdump_header(head)
            if header.incomplete:
                notes.append("kdump header flags the dump incomplete")
            offset, size = vmci.vmcoreinfo_from_kdump_header(head)
            text = read_bytes(shell, path, offset, size).decode(errors="replace")
            return vmci.parse_vmcoreinfo(text), header.incomplete
        if kind == "elf":
            if vmci.elf_headers_size(head) > len(head):
                head = read_bytes(shell, path, 0, vmci.elf_headers_size(head))
            for offset, size in vmci.elf_note_segments(head):
                note = vmci.find_elf_note(read_bytes(shell, path, offset, size))
                if note is not None:
                    return vmci.parse_vmcoreinfo(note.decode(errors="replace")), False
            notes.append("ELF vmcore without a VMCOREINFO note")
            return {}, False
        notes.append(f"{path}: {kind} format, VMCOREINFO not read")
    except vmci.DumpFormatError as exc:
        notes.append(f"{path}: {exc}")
    return {}, False
