"""Finding and reading the dumps kdump saved, per distribution layout.

Debian kdump-tools: <path>/<YYYYMMDDHHMM>/dmesg.<stamp> + dump.<stamp> (kdump-compressed),
with ``dump-incomplete`` while makedumpfile runs. The virtual lab adds vmcoreinfo.<stamp> and,
where makedumpfile cannot read the vmcore (arm64 7.3, 4K pages + 52-bit VA),
dump-unsupported.<stamp> holding the reason (docs/DESIGN.md, guest contract).
RHEL kexec-tools: <path>/<ip>-<YYYY-MM-DD-HH:MM:SS>/vmcore + vmcore-dmesg.txt, with
vmcore-dmesg-incomplete.txt / vmcore-incomplete when saving failed (kernel-facts.md §6).
"""

from __future__ import annotations

import abc
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.errors import ConfigError
from orchestrator.kernel import vmcoreinfo as vmci
from orchestrator.kernel.dumpfile import vmcoreinfo_from_dump
from orchestrator.protocols.shell import ShellProtocol
from orchestrator.tunables import KDUMP_COMMAND_TIMEOUT_S


@dataclass(frozen=True)
class DumpRecord:
    dump_id: str
    path: str
    files: dict[str, int]                 # name -> size in bytes
    dmesg: str | None
    vmcoreinfo: dict[str, str]
    incomplete: bool                      # saving did not finish: trust nothing but the dmesg
    notes: tuple[str, ...]


KDUMP_LOADED_CMD = "cat /sys/kernel/kexec_crash_loaded"


def kdump_loaded(shell: ShellProtocol) -> bool:
    """True when a crash kernel is loaded (a panic now would be dumped)."""
    result = shell.run(KDUMP_LOADED_CMD, timeout=30, check=False)
    return result.ok and result.stdout.strip() == "1"


class KdumpLayout(abc.ABC):
    name: str
    id_pattern: re.Pattern[str]

    def __init__(self, path: str = "/var/crash"):
        self.path = path.rstrip("/") or "/"

    def list_dumps(self, shell: ShellProtocol) -> list[str]:
        """Dump directory names, oldest first."""
        out = shell.run(self.list_command(), timeout=KDUMP_COMMAND_TIMEOUT_S, check=False).stdout
        return sorted((n for n in out.split() if self.id_pattern.match(n)), key=self.sort_key)

    def sort_key(self, dump_id: str) -> str:
        return dump_id

    # The commands list_dumps, written_since and collect run (for protocols/shell_batch.py).
    def list_command(self) -> str:
        return f"ls -1 {shlex.quote(self.path)} 2>/dev/null"

    def written_since_command(self) -> str:
        return f"stat -c '%Y %n' {shlex.quote(self.path)}/*/* 2>/dev/null"

    def collect_reads(self, dump_id: str) -> list[str]:
        """The reads ``collect`` is expected to make of a complete dump of this layout."""
        directory = f"{self.path}/{dump_id}"
        return [f"ls -ln {shlex.quote(directory)}"]

    def named_in(self, lines: Iterable[str]) -> str | None:
        """The last dump directory of this layout the text names by its path: the crash
        kernel's console says where it saved (kdump-tools "saved vmcore in /var/crash/<id>",
        kexec-tools "saving to /sysroot/var/crash/<id>/"). A hint only: the listing decides."""
        where = re.compile(re.escape(self.path) + r"/([^/\s'\"]+)")
        named = [m[1].rstrip(".,") for line in lines for m in where.finditer(line)]
        return next((n for n in reversed(named) if self.id_pattern.match(n)), None)

    def written_since(self, shell: ShellProtocol, epoch: float) -> list[str]:
        """Dump directories holding a file modified at or after ``epoch`` (host clock).

        Names alone cannot tell a new dump: kdump-tools names a dump by the minute and a
        second crash in the same minute rewrites that directory."""
        out = shell.run(self.written_since_command(), timeout=KDUMP_COMMAND_TIMEOUT_S, check=False).stdout
        found = set()
        for line in out.splitlines():
            mtime, _, name = line.partition(" ")
            parts = name[len(self.path) + 1:].split("/")
            if mtime.isdigit() and int(mtime) >= epoch and len(parts) == 2 and self.id_pattern.match(parts[0]):
                found.add(parts[0])
        return sorted(found, key=self.sort_key)

    def collect(self, shell: ShellProtocol, dump_id: str) -> DumpRecord:
        if not self.id_pattern.match(dump_id):
            raise ConfigError(f"{dump_id!r} is not a {self.name} dump directory name")
        directory = f"{self.path}/{dump_id}"
        files = _list_files(shell, directory)
        notes: list[str] = []
        dmesg_name, dump_name, incomplete = self.classify(dump_id, files, notes)
        dmesg = _cat(shell, f"{directory}/{dmesg_name}") if dmesg_name else None
        if dmesg is None:
            notes.append("no dmesg file")
        info: dict[str, str] = {}
        text_name = self.vmcoreinfo_text(dump_id)
        if text_name in files:
            info = vmci.parse_vmcoreinfo(_cat(shell, f"{directory}/{text_name}") or "")
        elif dump_name:
            info, header_incomplete = vmcoreinfo_from_dump(shell, f"{directory}/{dump_name}", notes)
            incomplete = incomplete or header_incomplete
        if not info:
            notes.append("no VMCOREINFO")
        return DumpRecord(dump_id, directory, files, dmesg, info, incomplete, tuple(notes))

    @abc.abstractmethod
    def classify(self, dump_id: str, files: dict[str, int],
                 notes: list[str]) -> tuple[str | None, str | None, bool]:
        """(dmesg file, dump file, incomplete) from the directory listing; appends notes."""

    def vmcoreinfo_text(self, dump_id: str) -> str | None:
        return None


class DebianLayout(KdumpLayout):
    name = "debian"
    id_pattern = re.compile(r"^\d{12}$")

    def vmcoreinfo_text(self, dump_id):
        return f"vmcoreinfo.{dump_id}"

    def collect_reads(self, dump_id):
        directory = f"{self.path}/{dump_id}"
        return super().collect_reads(dump_id) + [_cat_command(f"{directory}/{name}.{dump_id}")
                                                 for name in ("dmesg", "vmcoreinfo")]

    def classify(self, dump_id, files, notes):
        dmesg = f"dmesg.{dump_id}" if f"dmesg.{dump_id}" in files else None
        dump = f"dump.{dump_id}" if f"dump.{dump_id}" in files else None
        incomplete = "dump-incomplete" in files
        if incomplete:
            notes.append("dump-incomplete present: makedumpfile did not finish")
        unsupported = f"dump-unsupported.{dump_id}"
        if unsupported in files:       # the lab's arm64 case: the dmesg is the whole record
            notes.append(f"no dump file by design ({unsupported}); dmesg only")
            incomplete = incomplete or dmesg is None
        elif dump is None:
            notes.append("no dump file")
            incomplete = True
        return dmesg, dump, incomplete

    def collect(self, shell, dump_id):
        record = super().collect(shell, dump_id)
        reason_file = f"dump-unsupported.{dump_id}"
        if reason_file not in record.files:
            return record
        reason = " ".join((_cat(shell, f"{record.path}/{reason_file}") or "").split())
        notes = tuple(f"{n}: {reason}" if n.startswith("no dump file by design") else n
                      for n in record.notes)
        return DumpRecord(record.dump_id, record.path, record.files, record.dmesg,
                          record.vmcoreinfo, record.incomplete, notes)


class RhelLayout(KdumpLayout):
    name = "rhel"
    id_pattern = re.compile(r"^(?P<host>[^/\s]+)-(?P<when>\d{4}-\d{2}-\d{2}-\d{2}:\d{2}:\d{2})$")

    def sort_key(self, dump_id):
        return self.id_pattern.match(dump_id)["when"]

    def classify(self, dump_id, files, notes):
        incomplete = False
        dmesg = "vmcore-dmesg.txt" if "vmcore-dmesg.txt" in files else None
        if "vmcore-dmesg-incomplete.txt" in files:
            notes.append("vmcore-dmesg-incomplete.txt: extracting the dmesg failed")
            dmesg, incomplete = dmesg or "vmcore-dmesg-incomplete.txt", True
        dump = "vmcore" if "vmcore" in files else None
        if "vmcore-incomplete" in files:
            notes.append("vmcore-incomplete: saving the vmcore failed")
            incomplete = True
        elif dump is None:
            notes.append("no vmcore")
        return dmesg, dump, incomplete


class AutoLayout(KdumpLayout):
    """Whichever layout each dump directory's name belongs to."""
    name = "auto"
    id_pattern = re.compile(f"{DebianLayout.id_pattern.pattern}|{RhelLayout.id_pattern.pattern}")

    def __init__(self, path="/var/crash"):
        super().__init__(path)
        self.layouts = (DebianLayout(path), RhelLayout(path))

    def sort_key(self, dump_id):
        # both as YYYYMMDDHHMMSS digits (Debian's names stop at minutes)
        return re.sub(r"\D", "", self._layout(dump_id).sort_key(dump_id)).ljust(14, "0")

    def collect(self, shell, dump_id):
        return self._layout(dump_id).collect(shell, dump_id)

    def collect_reads(self, dump_id):
        return self._layout(dump_id).collect_reads(dump_id)

    def classify(self, dump_id, files, notes):
        return self._layout(dump_id).classify(dump_id, files, notes)

    def _layout(self, dump_id):
        for layout in self.layouts:
            if layout.id_pattern.match(dump_id):
                return layout
        raise ConfigError(f"{dump_id!r} is neither a debian nor a rhel dump directory name")


_LAYOUTS = {cls.name: cls for cls in (DebianLayout, RhelLayout, AutoLayout)}


def layout_for(name: str, path: str = "/var/crash") -> KdumpLayout:
    try:
        return _LAYOUTS[name](path)
    except KeyError:
        raise ConfigError(f"unknown kdump layout {name!r}; known: {', '.join(_LAYOUTS)}") from None


def _list_files(shell, directory) -> dict[str, int]:
    """Regular files and sizes from `ls -ln` (stat(1) is not on every busybox)."""
    out = shell.run(f"ls -ln {shlex.quote(directory)}", timeout=KDUMP_COMMAND_TIMEOUT_S).stdout
    files = {}
    for line in out.splitlines():
        fields = line.split(None, 8)
        if len(fields) == 9 and line.startswith("-"):
            files[fields[8]] = int(fields[4])
    return files


def _cat_command(path: str) -> str:
    return f"cat {shlex.quote(path)}"


def _cat(shell, path) -> str | None:
    result = shell.run(_cat_command(path), timeout=KDUMP_COMMAND_TIMEOUT_S, check=False)
    return result.stdout if result.ok else None
