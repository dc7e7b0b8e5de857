"""A reproducible initramfs writer (cpio "newc", what the kernel unpacks).

Written here rather than by calling cpio(1) so that the output depends only on the tree's
contents: entries sorted by path, inode numbers assigned in that order, owner root, one
fixed mtime (SOURCE_DATE_EPOCH), and device nodes (/dev/console) added without mknod.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_TRAILER = "TRAILER!!!"


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class _NewcWriter:
    def __init__(self, out: BinaryIO, mtime: int):
        self.out, self.mtime, self.ino = out, mtime, 0

    def entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self.ino, mode, 0, 0, nlink, self.mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        self.out.write(header + encoded + _pad(len(header) + len(encoded)))
        self.out.write(data + _pad(len(data)))

    def trailer(self) -> None:
        self.ino = -1  # the trailer carries inode 0
        self.entry(_TRAILER, 0)


def _walk_sorted(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield Path(dirpath) / name


def write_newc(tree: Path, out_path: Path, *, mtime: int,
               char_devices: dict[str, tuple[int, int]] | None = None) -> None:
    """Pack ``tree`` into ``out_path``; ``char_devices`` maps ``dev/console`` -> (5, 1)."""
    entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    for path in _walk_sorted(tree):
        rel = path.relative_to(tree).as_posix()
        st = path.lstat()
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entries[rel] = (stat.S_IFLNK | 0o777, os.readlink(path).encode(), (0, 0))
        elif stat.S_ISDIR(st.st_mode):
            entries[rel] = (stat.S_IFDIR | perm, b"", (0, 0))
        elif stat.S_ISREG(st.st_mode):
            entries[rel] = (stat.S_IFREG | perm, path.read_bytes(), (0, 0))
        else:
            raise ValueError(f"unsupported file type in initramfs tree: {rel}")
    for rel, rdev in (char_devices or {}).items():
        entries[rel] = (stat.S_IFCHR | 0o600, b"", rdev)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    with open(tmp, "wb") as out:
        writer = _NewcWriter(out, mtime)
        # sorted as strings: a directory ("dev") always precedes its children ("dev/console")
        for rel in sorted(entries):
            mode, data, rdev = entries[rel]
            writer.entry(rel, mode, data, rdev)
        writer.trailer()
    tmp.replace(out_path)
