"""VMCOREINFO from constructed kdump-compressed headers and ELF notes; kdump layouts collected
from dump directories built on local disk, read through dash (and busybox when available)."""

from __future__ import annotations

import struct

import pytest

from orchestrator.errors import ConfigError
from orchestrator.kernel import vmcoreinfo as vmci
from orchestrator.kernel.dumpfile import read_bytes
from orchestrator.kernel.kdump import kdump_loaded, layout_for
from test_kernel_shells import FakeShell, LocalShell, busybox_shell

INFO = ("OSRELEASE=7.3.4+deb13-cloud-amd64\nBUILD-ID=1fe9968467f2755292a45806719b9bba136b0cc8\n"
        "PAGESIZE=4096\nSYMBOL(init_uts_ns)=ffffffffb8a12340\nOFFSET(page.flags)=0\n"
        "KERNELOFFSET=36a00000\nCRASHTIME=1795628240\nCRASHTIME=1795628242\n")


def kdump_file(info=INFO, version=6, status=0, block_size=4096, at=8292) -> bytes:
    """A kdump-compressed file as makedumpfile lays it out (struct disk_dump_header at 0,
    struct kdump_sub_header at block_size), with the VMCOREINFO text at ``at``."""
    header = bytearray(block_size)
    header[0:8] = b"KDUMP   "
    struct.pack_into("<i", header, 8, version)
    for index, text in ((0, b"Linux"), (1, b"vlab-x86-1"), (2, b"7.3.4+deb13-cloud-amd64"),
                        (4, b"x86_64")):
        header[12 + 65 * index:12 + 65 * index + len(text)] = text
    struct.pack_into("<qq", header, 408, 1795628242, 0)                       # timeval
    struct.pack_into("<IiiIIIIIIi", header, 424, status, block_size, 1, 2, 262144, 0, 0, 0, 0, 1)
    sub = struct.pack("<QiiQQqQ", 0, 31, 0, 0, 0, at, len(info))
    body = bytes(header) + sub
    return body + bytes(at - len(body)) + info.encode() + bytes(512)


def note(name: bytes, desc: bytes, note_type=0) -> bytes:
    pad = lambda b: b + bytes(-len(b) % 4)
    return struct.pack("<III", len(name) + 1, len(desc), note_type) + pad(name + b"\0") + pad(desc)


def elf_core(info=INFO) -> bytes:
    """ELF64 LE core: header, PT_NOTE (a CORE/PRSTATUS note, then VMCOREINFO), one PT_LOAD."""
    notes = note(b"CORE", bytes(336), 1) + note(b"VMCOREINFO", info.encode()) + bytes(12)
    notes_at = 64 + 2 * 56
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, notes_at, 0, 0, len(notes), len(notes), 0)
    phdrs += struct.pack("<IIQQQQQQ", 1, 7, notes_at + len(notes), 0, 0x1000, 4096, 4096, 4096)
    return ehdr + phdrs + notes + bytes(4096)


# --- vmcoreinfo.py: pure functions ---------------------------------------------------------

def test_parse_vmcoreinfo_last_value_wins_and_nul_ends_lines():
    info = vmci.parse_vmcoreinfo(INFO + "\x00\x00")
    assert info["OSRELEASE"] == "7.3.4+deb13-cloud-amd64" and info["PAGESIZE"] == "4096"
    assert info["CRASHTIME"] == "1795628242" and info["SYMBOL(init_uts_ns)"] == "ffffffffb8a12340"


def test_kdump_header_fields_and_vmcoreinfo_location():
    data = kdump_file()
    header = vmci.parse_kdump_header(data)
    assert (header.header_version, header.release, header.machine) == (6, "7.3.4+deb13-cloud-amd64", "x86_64")
    assert (header.block_size, header.nr_cpus, header.incomplete) == (4096, 1, False)
    offset, size = vmci.vmcoreinfo_from_kdump_header(data)
    assert (offset, size) == (8292, len(INFO))
    assert vmci.parse_vmcoreinfo(data[offset:offset + size].decode())["BUILD-ID"].startswith("1fe99")


def test_kdump_header_incomplete_flag_and_64k_blocks():
    data = kdump_file(status=vmci.DUMP_DH_COMPRESSED_INCOMPLETE, block_size=65536, at=70000)
    header = vmci.parse_kdump_header(data)
    assert header.incomplete and header.block_size == 65536
    assert vmci.vmcoreinfo_from_kdump_header(data) == (70000, len(INFO))


def test_kdump_header_errors():
    with pytest.raises(vmci.DumpFormatError, match="not a kdump"):
        vmci.parse_kdump_header(b"\x7fELF" + bytes(600))
    with pytest.raises(vmci.DumpFormatError, match="carries no VMCOREINFO"):
        vmci.vmcoreinfo_from_kdump_header(kdump_file(version=2))
    with pytest.raises(vmci.DumpFormatError, match="need"):
        vmci.parse_kdump_header(kdump_file()[:4100])                  # sub-header cut off


def test_elf_notes():
    core = elf_core()
    assert vmci.dump_format(core) == "elf"
    [(offset, size)] = vmci.elf_note_segments(core)
    desc = vmci.find_elf_note(core[offset:offset + size])
    assert desc.decode() == INFO
    assert vmci.find_elf_note(core[offset:offset + size], "NOPE") is None
    with pytest.raises(vmci.DumpFormatError):
        vmci.elf_note_segments(b"\x7fELF" + bytes([1, 1]) + bytes(58))   # 32-bit


# --- kdump.py: layouts over real directories -----------------------------------------------

@pytest.fixture(params=["dash", "busybox"])
def shell(request, tmp_path):
    return LocalShell() if request.param == "dash" else busybox_shell(tmp_path)


@pytest.fixture
def crash(tmp_path):
    root = tmp_path / "crash"
    def make(name, files):
        d = root / name
        d.mkdir(parents=True)
        for file, content in files.items():
            (d / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    make("202611251737", {"dmesg.202611251737": "[ 93.6] Kernel panic - not syncing: Memory failure: 0x38830: unrecoverable page\n",
                          "dump.202611251737": kdump_file(), "vmcoreinfo.202611251737": INFO})
    make("202611251802", {"dmesg.202611251802": "x\n", "dump.202611251802": kdump_file(
        info=INFO.replace("1795628242", "1795629999"))})
    make("202611251810", {"dmesg.202611251810": "arm64 panic\n", "vmcoreinfo.202611251810": INFO,
                          "dump-unsupported.202611251810": "calculate_plat_config: PAGE SIZE 0x1000\nand VA Bits 52 not supported\n"})
    make("202611251815", {"dmesg.202611251815": "y\n", "dump-incomplete": kdump_file()[:5000]})
    make("202611251820", {"dmesg.202611251820": "z\n", "dump.202611251820": kdump_file(status=8)})
    make("127.0.0.1-2026-11-25-17:37:22", {"vmcore": elf_core(), "vmcore-dmesg.txt": "rhel dmesg\n"})
    make("127.0.0.1-2026-11-24-09:00:00", {"vmcore-dmesg-incomplete.txt": "partial\n", "vmcore-incomplete": b"\0" * 10})
    (root / "kexec_cmd").write_text("kexec -p ...\n")
    return root


def test_debian_listing_ignores_other_entries(shell, crash):
    assert layout_for("debian", str(crash)).list_dumps(shell) == [
        "202611251737", "202611251802", "202611251810", "202611251815", "202611251820"]


def test_debian_collect_with_vmcoreinfo_file(shell, crash):
    record = layout_for("debian", str(crash)).collect(shell, "202611251737")
    assert record.files == {"dmesg.202611251737": len(record.dmesg),
                            "dump.202611251737": len(kdump_file()), "vmcoreinfo.202611251737": len(INFO)}
    assert "unrecoverable page" in record.dmesg and record.vmcoreinfo["CRASHTIME"] == "1795628242"
    assert not record.incomplete and record.notes == ()


def test_debian_collect_reads_vmcoreinfo_from_the_dump_header(shell, crash):
    record = layout_for("debian", str(crash)).collect(shell, "202611251802")
    assert record.vmcoreinfo["CRASHTIME"] == "1795629999" and not record.incomplete


def test_debian_arm64_unsupported_dump_is_dmesg_only(shell, crash):
    record = layout_for("debian", str(crash)).collect(shell, "202611251810")
    assert record.dmesg == "arm64 panic\n" and not record.incomplete
    assert any("VA Bits 52 not supported" in n for n in record.notes)


def test_debian_in_progress_and_header_flagged_dumps_are_incomplete(shell, crash):
    layout = layout_for("debian", str(crash))
    assert layout.collect(shell, "202611251815").incomplete
    flagged = layout.collect(shell, "202611251820")
    assert flagged.incomplete and "kdump header flags the dump incomplete" in flagged.notes


def test_rhel_layout(shell, crash):
    layout = layout_for("rhel", str(crash))
    assert layout.list_dumps(shell) == ["127.0.0.1-2026-11-24-09:00:00", "127.0.0.1-2026-11-25-17:37:22"]
    good = layout.collect(shell, "127.0.0.1-2026-11-25-17:37:22")
    assert good.dmesg == "rhel dmesg\n" and good.vmcoreinfo["OSRELEASE"] == "7.3.4+deb13-cloud-amd64"
    assert not good.incomplete
    bad = layout.collect(shell, "127.0.0.1-2026-11-24-09:00:00")
    assert bad.incomplete and bad.dmesg == "partial\n" and "no VMCOREINFO" in bad.notes


def test_auto_layout_lists_both_in_time_order(crash):
    layout = layout_for("auto", str(crash))
    ids = layout.list_dumps(LocalShell())
    assert ids[0] == "127.0.0.1-2026-11-24-09:00:00" and ids[-1] == "202611251820" and len(ids) == 7
    assert layout.collect(LocalShell(), ids[0]).incomplete


def test_bad_names_and_layouts(crash):
    with pytest.raises(ConfigError):
        layout_for("suse")
    with pytest.raises(ConfigError):
        layout_for("debian", str(crash)).collect(FakeShell([]), "../../etc")


def test_read_bytes_unaligned(shell, tmp_path):
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 8)
    assert read_bytes(shell, str(tmp_path / "blob"), 510, 5) == bytes([254, 255, 0, 1, 2])
    assert read_bytes(shell, str(tmp_path / "blob"), 2040, 100) == bytes(range(248, 256))


def test_kdump_loaded():
    assert kdump_loaded(FakeShell([(r"kexec_crash_loaded", "1\n")]))
    assert not kdump_loaded(FakeShell([(r"kexec_crash_loaded", "0\n")]))
    assert not kdump_loaded(FakeShell([(r"kexec_crash_loaded", "", 1, "No such file")]))


def test_written_since_finds_a_dump_directory_rewritten_in_the_same_minute(tmp_path):
    import os

    crash = tmp_path / "crash"
    for stamp, mtime in (("202611240101", 1_000), ("202611251737", 5_000)):
        (crash / stamp).mkdir(parents=True)
        dmesg = crash / stamp / f"dmesg.{stamp}"
        dmesg.write_text("x\n")
        os.utime(dmesg, (mtime, mtime))
    (crash / "not-a-dump").mkdir()
    os.utime(crash / "not-a-dump", (9_000, 9_000))
    layout = layout_for("debian", str(crash))
    shell = LocalShell()
    assert layout.written_since(shell, 4_000) == ["202611251737"]
    assert layout.written_since(shell, 500) == ["202611240101", "202611251737"]
    assert layout.written_since(shell, 6_000) == []
