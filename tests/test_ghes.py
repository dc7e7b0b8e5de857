"""Firmware-first (GHES) pieces without booting anything: the CPER record's bytes, the lab
firmware's QMP request, the RAS machine's command line, and how GHES cases are expected and
judged (the lab run is tests/test_e2e_ghes.py)."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest

from orchestrator.config.model import Host, SshConfig
from orchestrator.config.playbook import Expectation, build_case
from orchestrator.config.applicability import skip_reason
from orchestrator.cycle.verify import Observation, judge_panic, judge_survive
from orchestrator.errors import ConfigError, UnsupportedOperation
from orchestrator.kernel.firmware_reports import for_case
from orchestrator.kernel.injectors import injector
from orchestrator.vlab.image.apt import PrivateApt
from orchestrator.vlab.image.ras_qemu import RasQemu, sysroot_key
from orchestrator.vlab.lab.layout import host_features
from orchestrator.vlab.qemu import ghes
from orchestrator.vlab.qemu.process import is_qemu_command
from orchestrator.vlab.qemu.qmp import QmpError

ADDR = 0x40990000


@pytest.mark.parametrize("severity, sev, block_status", [("recoverable", 0, 0x11), ("fatal", 1, 0x11),
                                                         ("corrected", 2, 0x12)])
def test_cper_record_layout(severity, sev, block_status):
    record = ghes.cper_record(ADDR, severity)
    assert len(record) == 172                               # 20 + 72 + 80, as QEMU and the kernel read it
    # Generic Error Status Block: status, raw offset, raw length, data length, severity
    assert struct.unpack_from("<5I", record, 0) == (block_status, 0, 0, 152, sev)
    # Generic Error Data Entry: platform-memory GUID in its mixed-endian wire form
    assert record[20:36] == bytes.fromhex("1411bca5646fde4eb8633e83ed7c83b1")
    assert struct.unpack_from("<IHBBI", record, 36) == (sev, 0x300, 0, 0, 80)
    assert record[48:92] == bytes(44)                       # no FRU id, FRU text or time stamp
    # memory error section: PA | PA_MASK | ERROR_TYPE valid, address, page mask, multi-bit ECC
    assert struct.unpack_from("<QQQQ", record, 92) == (0x4006, 0, ADDR, 0xfffffffffffff000)
    assert record[92 + 72] == 3 and record[92 + 73:] == bytes(7)


class FakeMachine:
    def __init__(self, error: QmpError | None = None):
        self.calls, self.error = [], error

    def qmp(self, command, **arguments):
        self.calls.append((command, arguments))
        if self.error:
            raise self.error


class Spec:
    name = "vlab-arm-1"

    def __init__(self, ras_qemu):
        self.ras_qemu = ras_qemu


def test_lab_firmware_sends_the_record_over_qmp():
    machine = FakeMachine()
    ghes.PATHS["ghes"](machine, Spec("/sysroot"), ADDR, "fatal")
    (command, arguments), = machine.calls
    assert command == "inject-ghes-v2-error"
    assert base64.b64decode(arguments["cper"]) == ghes.cper_record(ADDR, "fatal")


def test_lab_firmware_says_why_it_cannot():
    with pytest.raises(UnsupportedOperation, match="no firmware-first .GHES. injection on lab machine vlab-arm-1"):
        ghes.raise_ghes_error(FakeMachine(), Spec(None), ADDR, "recoverable")
    refused = FakeMachine(QmpError("inject-ghes-v2-error", "GenericError", "OSPM does not acknowledge previous error"))
    with pytest.raises(UnsupportedOperation, match="OSPM does not acknowledge"):
        ghes.raise_ghes_error(refused, Spec("/sysroot"), ADDR, "recoverable")


def test_ras_qemu_runs_through_trixies_loader(tmp_path):
    ras = RasQemu(tmp_path, "11.1.3", ())
    argv = ras.argv()
    assert argv[0].endswith("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2") and argv[1] == "--library-path"
    assert argv[2].startswith(f"{tmp_path}/usr/lib/x86_64-linux-gnu:") and argv[2].endswith(":/usr/lib/x86_64-linux-gnu")
    assert argv[3] == f"{tmp_path}/usr/bin/qemu-system-aarch64" and argv[4:] == ["-L", f"{tmp_path}/usr/share/qemu"]
    assert is_qemu_command([a.encode() for a in argv + ["-name", "vlab-arm-1"]])
    assert is_qemu_command([b"qemu-system-x86_64", b"-name", b"x"])
    assert not is_qemu_command([str(ras.loader).encode(), b"--library-path", b"L", b"/usr/bin/sleep"])


def test_sysroot_is_keyed_by_package_versions():
    one = {"qemu-system-arm:amd64": "1:11.1.3+ds-2~bpo13+1", "libc6:amd64": "2.41-12+deb13u5"}
    assert sysroot_key(one) == sysroot_key(dict(reversed(one.items())))
    assert sysroot_key(one) != sysroot_key({**one, "libc6:amd64": "2.41-12+deb13u6"})


def test_private_apt_with_its_own_suites_and_pins(tmp_path):
    apt = PrivateApt(tmp_path, suites=("trixie-backports", "trixie"), architectures=("amd64",),
                     pins="Package: qemu-system-arm\nPin: release n=trixie-backports\nPin-Priority: 990\n")
    apt.prepare()
    sources = (tmp_path / "sources.list").read_text().splitlines()
    assert [line.split()[-2] for line in sources] == ["trixie-backports", "trixie"]
    assert all("[arch=amd64 " in line for line in sources)
    assert "Pin-Priority: 990" in (tmp_path / "preferences").read_text()
    options = apt.options()
    assert "APT::Architectures::=amd64" in options and "APT::Architectures::=arm64" not in options
    assert f"Dir::Etc::preferences={tmp_path / 'preferences'}" in options
    default = PrivateApt(tmp_path / "guest")                # the guest images' configuration
    default.prepare()
    assert "trixie-backports main" in (tmp_path / "guest/sources.list").read_text()
    assert (tmp_path / "guest/preferences").read_text() == ""


def test_ras_machine_command_line(tmp_path):
    from orchestrator.vlab.image.manifest import ImageManifest
    from orchestrator.vlab.qemu.spec import MachineSpec, command_line

    root = tmp_path / "sysroot"
    root.mkdir()
    (root / "qemu.json").write_text('{"version": "11.1.3", "packages": []}')
    image = ImageManifest("aarch64", "7.3.4+deb13-cloud-arm64", "ttyAMA0", Path("/i/vmlinuz"), Path("/i/initrd.img"),
                          Path("/i/initrd.img"), Path("/i/boot.img"), (), (), (), "k", "t", 1.0)
    paths = dict(disk=tmp_path / "d", serial_socket=tmp_path / "s", qmp_socket=tmp_path / "q",
                 events_socket=tmp_path / "e", pidfile=tmp_path / "p")
    spec = MachineSpec(name="a", arch="aarch64", machine_dir=tmp_path, image=image, ssh_port=2222)
    plain = command_line(spec, **paths)
    ras = command_line(MachineSpec(name="a", arch="aarch64", machine_dir=tmp_path, image=image, ssh_port=2222,
                                   ras_qemu=str(root)), **paths)
    assert plain[0] == "qemu-system-aarch64" and "virt,gic-version=3" in plain and "-bios" not in plain
    assert ras[3].endswith("qemu-system-aarch64") and "virt,gic-version=3,ras=on" in ras
    assert ras[ras.index("-bios") + 1] == str(root / "usr/share/qemu-efi-aarch64/QEMU_EFI.fd")
    assert "virtio-net-pci,netdev=n0,romfile=" in ras and "virtio-net-pci,netdev=n0" in plain
    with pytest.raises(ConfigError, match="aarch64 only"):
        MachineSpec(name="x", arch="x86_64", machine_dir=tmp_path, image=image, ssh_port=1, ras_qemu=str(root))


def _case(injector_name: str, sysctl: int = 1):
    return build_case({"name": "c", "injector": injector_name, "target": "kernel-text", "expect": {"outcome": "matrix"},
                       "sysctls": {"vm.panic_on_unrecoverable_memory_failure": sysctl}}, "test")


def test_ghes_cases_need_the_ghes_feature_only_on_ras_machines():
    assert "ghes" in host_features("aarch64", ras=True) and "ghes" not in host_features("aarch64")
    ssh = SshConfig(address="h", port=22, user="root", key_file=Path("k"), known_hosts=Path("kh"))
    ras = Host(name="a", arch="aarch64", platform="p", ssh=ssh, bmc=None, features=frozenset(host_features("aarch64", True)))
    plain = Host(name="b", arch="aarch64", platform="p", ssh=ssh, bmc=None, features=frozenset(host_features("aarch64")))
    for name in ("ghes", "ghes_fatal", "ghes_corrected"):
        assert injector(name).feature == "ghes" and injector(name).path == "ghes"
        assert skip_reason(ras, _case(name)) is None
        assert skip_reason(plain, _case(name)) == "host lacks feature(s) ghes"


def test_report_severity_decides_before_the_matrix():
    resolved = Expectation(outcome="panic", action_label="reserved kernel page", action_result="Ignored",
                           signature="new", dump=True)
    assert for_case(_case("ghes"), resolved) == resolved
    assert for_case(_case("hwpoison_inject"), resolved) == resolved
    fatal = for_case(_case("ghes_fatal", 0), Expectation(outcome="survive", action_label="reserved kernel page",
                                                         action_result="Ignored", dump=False))
    assert (fatal.outcome, fatal.signature, fatal.dump, fatal.action_label) == ("panic", "ghes_fatal", True, None)
    corrected = for_case(_case("ghes_corrected"), resolved)
    assert (corrected.outcome, corrected.memory_failure, corrected.dump) == ("survive", False, False)


FATAL = ["[   33.53] {1}[Hardware Error]: event severity: fatal",
         "[   33.53] GHES: Fatal hardware error but panic disabled",
         "[   33.53] Kernel panic - not syncing: GHES: Fatal hardware error"]
NEW = ["[   25.29] Memory failure: 0x409a0: recovery action for reserved kernel page: Ignored",
       "[   25.29] Kernel panic - not syncing: Memory failure: 0x409a0: unrecoverable page"]


def test_fatal_report_is_judged_by_its_own_signature():
    want = Expectation(outcome="panic", signature="ghes_fatal", dump=True, memory_failure=False)
    obs = dict(pfn=0x409a0, vmcoreinfo={"CRASHTIME": "1"}, rebooted=True)
    assert judge_panic(Observation(console=tuple(FATAL), dump_dmesg="\n".join(FATAL), **obs), want) == []
    wrong = judge_panic(Observation(console=tuple(NEW), dump_dmesg="\n".join(NEW), **obs), want)
    assert wrong and all("not the expected ghes_fatal" in reason for reason in wrong)


def test_corrected_report_must_not_reach_memory_failure():
    want = Expectation(outcome="survive", dump=False, memory_failure=False)
    quiet = Observation(pfn=0x409a0, live_dmesg="[ 5.1] {1}[Hardware Error]: event severity: corrected")
    assert judge_survive(quiet, want) == []
    ran = judge_survive(Observation(pfn=0x409a0, live_dmesg=NEW[0]), want)
    assert ran == [f"memory_failure() ran on pfn 0x409a0, expected it not to: {NEW[0]}"]


def test_the_cycle_keeps_the_hosts_firmware():
    """The case cycle wraps the host's transports; the firmware handle must survive that (it was
    dropped once: every GHES case then ended "the host has no BMC ...")."""
    from orchestrator.cycle.handles import HostHandles
    from orchestrator.cycle.machine import CaseCycle

    class Firmware:
        reports = []

        def report_memory_error(self, phys_addr, *, path, severity):
            self.reports.append((phys_addr, path, severity))

    ssh = SshConfig(address="h", port=22, user="root", key_file=Path("k"), known_hosts=Path("kh"))
    host = Host(name="a", arch="aarch64", platform="p", ssh=ssh, bmc=None)
    handles = HostHandles(host=host, shell=None, poll_shell=None, power=None, console=None, kdump=None,
                          firmware=Firmware())
    cycle = CaseCycle(handles, _case("ghes"))
    cycle.h.firmware.report_memory_error(ADDR, path="ghes", severity="recoverable")
    assert Firmware.reports == [(ADDR, "ghes", "recoverable")]


def test_lab_falls_back_to_the_system_qemu_and_says_so(monkeypatch):
    from orchestrator.vlab.image import ras_qemu
    from orchestrator.vlab.lab.checks import ras_platform

    said = []
    assert ras_platform("x86_64", "vlab-x86-1", said.append) is None and said == []
    monkeypatch.setattr(ras_qemu, "fetch_ras_qemu", lambda **_: (_ for _ in ()).throw(
        ConfigError("apt-get update failed: Could not resolve 'deb.debian.org'")))
    assert ras_platform("aarch64", "vlab-arm-1", said.append) is None
    assert said == ["vlab-arm-1: no firmware-first injection on this lab machine (QEMU 11 not available: "
                    "apt-get update failed: Could not resolve 'deb.debian.org'); it runs the system QEMU"]
    monkeypatch.setenv("ORCH_VLAB_RAS", "0")
    assert ras_platform("aarch64", "vlab-arm-1", said.append) is None
    assert "no firmware-first injection" in said[-1]


def test_every_ghes_severity_has_a_measured_row():
    from orchestrator.kernel.firmware_reports import report_row
    from orchestrator.protocols.firmware import SEVERITIES

    for severity in SEVERITIES["ghes"]:
        row = report_row("ghes", severity)
        assert set(row) == {"memory_failure", "panic"} and row["panic"] in (None, "ghes_fatal")
    with pytest.raises(ConfigError, match="nothing about srao ghes"):
        report_row("ghes", "srao")
