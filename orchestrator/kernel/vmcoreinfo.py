"""VMCOREINFO: the KEY=value note the crashed kernel leaves for dump tools.

Found as a text file the lab writes (vmcoreinfo.<stamp>), inside a kdump-compressed dump
(makedumpfile's header: ``struct disk_dump_header`` then, one block later,
``struct kdump_sub_header`` with offset_vmcoreinfo/size_vmcoreinfo; layout from makedumpfile
diskdump_mod.h, LP64 little-endian as on x86_64 and arm64), or in an ELF vmcore's PT_NOTE.
Pure functions over bytes: kdump.py fetches only the bytes these ask for.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from orchestrator.errors import FatalInfraError

KDUMP_SIGNATURE = b"KDUMP   "
FLATTENED_SIGNATURE = b"makedumpfile"     # makedumpfile -F (streamed): must be rearranged first
ELF_MAGIC = b"\x7fELF"
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8       # status bit: makedumpfile ran out of space or died

# struct disk_dump_header (LP64): signature[8], int header_version, new_utsname (6 x 65 chars),
# struct timeval (aligned to 8), then status, block_size, sub_hdr_size ... nr_cpus.
_UTSNAME_AT, _UTS_FIELD = 12, 65
_AFTER_TIMEVAL = struct.Struct("<IiiIIIIIIi")          # status .. nr_cpus, at offset 424
_AFTER_TIMEVAL_AT = 424
# struct kdump_sub_header: phys_base, dump_level, split, start_pfn, end_pfn, offset_vmcoreinfo,
# size_vmcoreinfo (header_version >= 3), ...
_SUB_HEADER = struct.Struct("<QiiQQqQ")
KDUMP_HEADER_MIN = _AFTER_TIMEVAL_AT + _AFTER_TIMEVAL.size
PT_NOTE = 4


class DumpFormatError(FatalInfraError):
    """The dump file is not what its name or signature promises (truncated, other format)."""


def parse_vmcoreinfo(text: str) -> dict[str, str]:
    """KEY=value lines (SYMBOL(x)=..., OFFSET(a.b)=..., CRASHTIME=...). A key seen twice keeps
    its last value: CRASHTIME is appended at crash time after the boot-time note."""
    info = {}
    for line in text.replace("\x00", "\n").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key:
            info[key] = value
    return info


def dump_format(head: bytes) -> str:
    """'kdump' | 'elf' | 'flattened' | 'unknown', from a file's first bytes."""
    if head.startswith(KDUMP_SIGNATURE):
        return "kdump"
    if head.startswith(ELF_MAGIC):
        return "elf"
    if head.startswith(FLATTENED_SIGNATURE):
        return "flattened"
    return "unknown"


@dataclass(frozen=True)
class KdumpHeader:
    header_version: int
    release: str
    machine: str
    status: int
    block_size: int
    nr_cpus: int
    offset_vmcoreinfo: int
    size_vmcoreinfo: int

    @property
    def incomplete(self) -> bool:
        return bool(self.status & DUMP_DH_COMPRESSED_INCOMPLETE)


def kdump_block_size(data: bytes) -> int:
    """The header's block_size: the sub-header starts this many bytes into the file."""
    _need(data, KDUMP_HEADER_MIN, "kdump header")
    return _AFTER_TIMEVAL.unpack_from(data, _AFTER_TIMEVAL_AT)[1]


def parse_kdump_header(data: bytes) -> KdumpHeader:
    """``data``: the file from offset 0 through the sub-header (block_size + 48 bytes)."""
    if dump_format(data) != "kdump":
        raise DumpFormatError(f"not a kdump-compressed dump (starts {data[:12]!r})")
    version = struct.unpack_from("<i", data, 8)[0]
    status, block_size, *_, nr_cpus = _AFTER_TIMEVAL.unpack_from(data, _AFTER_TIMEVAL_AT)
    if block_size <= 0 or block_size % 512:
        raise DumpFormatError(f"kdump header: implausible block_size {block_size}")
    offset = size = 0
    if version >= 3:                                     # vmcoreinfo fields exist from v3 on
        _need(data, block_size + _SUB_HEADER.size, "kdump sub-header")
        *_, offset, size = _SUB_HEADER.unpack_from(data, block_size)
    return KdumpHeader(version, _uts(data, 2), _uts(data, 4), status, block_size, nr_cpus,
                       offset, size)


def vmcoreinfo_from_kdump_header(data: bytes) -> tuple[int, int]:
    """(offset, size) of the VMCOREINFO text in a kdump-compressed file."""
    header = parse_kdump_header(data)
    if header.size_vmcoreinfo <= 0:
        raise DumpFormatError(f"kdump header version {header.header_version} carries no VMCOREINFO")
    return header.offset_vmcoreinfo, header.size_vmcoreinfo


def elf_headers_size(data: bytes) -> int:
    """Bytes from the start of a 64-bit little-endian ELF file through its program headers."""
    _need(data, 64, "ELF header")
    if dump_format(data) != "elf" or data[4] != 2 or data[5] != 1:
        raise DumpFormatError("not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    return phoff + phentsize * phnum


def elf_note_segments(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every PT_NOTE segment of a 64-bit little-endian ELF core."""
    _need(data, elf_headers_size(data), "ELF program headers")
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    segments = []
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == PT_NOTE:
            segments.append((p_offset, p_filesz))
    return segments


def find_elf_note(notes: bytes, name: str = "VMCOREINFO") -> bytes | None:
    """The descriptor of the first note called ``name`` in a PT_NOTE segment's bytes."""
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, _type = struct.unpack_from("<III", notes, at)
        if namesz == 0 and descsz == 0:
            break                                           # zero padding after the last note
        name_at = at + 12
        desc_at = name_at + _align4(namesz)
        if notes[name_at:name_at + namesz].rstrip(b"\x00") == name.encode():
            return notes[desc_at:desc_at + descsz]
        at = desc_at + _align4(descsz)
    return None


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _uts(data: bytes, index: int) -> str:
    start = _UTSNAME_AT + index * _UTS_FIELD
    return data[start:start + _UTS_FIELD].split(b"\x00")[0].decode(errors="replace")


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise DumpFormatError(f"{what}: need {size} bytes, have {len(data)}")
