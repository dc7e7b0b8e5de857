"""A scripted lab host for unit tests of the cycle: fakes of shell, power, console and kdump
layout wired to a tiny "kernel" that reacts to the injection as the scenario says.

No real time passes for reboots: the host comes back after a number of failed SSH probes,
so tests are fast and deterministic.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from orchestrator.config.model import Host, KdumpConfig, SshConfig
from orchestrator.cycle.handles import HostHandles
from orchestrator.cycle.hostwait import BOOT_FACTS_CMD
from orchestrator.transports.fake import FakeConsole, FakePower, FakeShell

EPOCH = 1_795_628_000
KERNEL_SYSCTLS: dict = {}       # the stubbed kernel's sysctls (install_kernel_stubs)


@dataclass(frozen=True)
class StubTarget:
    page_class: str
    pfn: int
    phys_addr: int
    kpageflags: int = 0x100000000
    kpagecount: int | None = 0
    how: str = "stub"
    cleanup: str | None = None


@dataclass(frozen=True)
class StubDump:
    dump_id: str
    path: str
    files: dict
    dmesg: str | None
    vmcoreinfo: dict
    incomplete: bool = False
    notes: tuple = ()


class StubLayout:
    name = "debian"

    def __init__(self, host: "FakeLabHost"):
        self.host = host

    def sort_key(self, dump_id: str) -> str:
        return dump_id

    def list_command(self) -> str:
        return "ls /var/crash"

    def written_since_command(self) -> str:
        return "stat -c '%Y %n' /var/crash/*/*"

    def collect_reads(self, dump_id: str) -> list[str]:
        return []

    def named_in(self, lines) -> None:
        return None

    def list_dumps(self, shell) -> list[str]:
        shell.run(self.list_command(), timeout=10)
        return sorted(self.host.dumps)

    def written_since(self, shell, epoch: float) -> list[str]:
        shell.run(self.written_since_command(), timeout=10)
        return sorted(self.host.rewritten)

    def collect(self, shell, dump_id: str) -> StubDump:
        return self.host.dumps[dump_id]


@dataclass
class FakeLabHost:
    """``behaviour``: panic | survive | no-panic | hang (panics, never reboots by itself) |
    stuck (no panic, SSH gone, kernel alive: a SysRq ``c`` after a serial BREAK crashes it)."""

    behaviour: str = "panic"
    pfn: int = 0x38830
    label: str = "reserved kernel page"
    result: str = "Ignored"
    panic_pfn: int | None = None            # a kernel that names another pfn in its panic
    writes_dump: bool = True
    reboot_after_probes: int = 3            # failed SSH probes before the host is back
    nmi_supported: bool = True
    ssh_drops_on_inject: bool = False
    dump_stamp: str = "202611251737"        # the minute kdump names the dump by
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    dumps: dict = field(default_factory=dict)
    rewritten: set = field(default_factory=set)   # dump dirs rewritten after the injection
    dmesg: list = field(default_factory=list)
    up: bool = True
    wedged: bool = False
    injected: bool = False                  # the injection's exit status is on the host
    kdump_loaded: bool = True
    journal: str | None = None              # the arm journal the cycle keeps on the host
    refuses: set = field(default_factory=set)   # (sysctl, value) writes the kernel does not take
    sysctls: dict | None = None             # its own /proc/sys (None: install_kernel_stubs' shared one)
    state_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="fakehost-state-"))
    # Real time, for benchmarks of many simulated hosts: each SSH round trip takes this long, and
    # a panicked host answers again this many seconds after it went down (None: after
    # ``reboot_after_probes`` failed probes, no time passing, for fast unit tests).
    command_s: float = 0.0
    reboot_after_s: float | None = None
    def __post_init__(self) -> None:
        self.console = FakeConsole(on_break=self._sysrq)
        self.power = FakePower(on_action=self._power_action, nmi_supported=self.nmi_supported)
        self._probes_down, self._down_since = 0, 0.0
        self.shell = FakeShell(self._answer, reachable=self._reachable, on_detached=self._inject,
                               round_trip_s=self.command_s)

    # -- what the host answers -------------------------------------------------------------
    def _answer(self, command: str) -> tuple[int, str]:
        if command == BOOT_FACTS_CMD:
            return 0, f"{self.boot_id}\n7.3.4+deb13-cloud-amd64\n1\n{EPOCH}\n"
        if command.endswith("date +%s"):
            self.injected = False       # the cycle clears the previous exit status first
            return 0, f"{EPOCH}\n"
        if "KernelPageSize" in command:     # kernel/facts.py's probe
            return 0, "x86_64\n7.3.4+deb13-cloud-amd64\n4096\n1\n"
        if command == "dmesg":
            return 0, "\n".join(self.dmesg) + "\n"
        if command.startswith("cat ") and "/inject.rc" in command:
            return (0, "16\n") if self.injected else (1, "")
        if command.startswith("cat ") and command.split()[1].endswith("/inject.err"):
            return 0, "sh: write error: Device or resource busy\n"
        sysctl_answer = self._sysctl_answer(command)
        if sysctl_answer is not None:
            return sysctl_answer
        return self._state_answer(command)

    def _state_answer(self, command: str) -> tuple[int, str]:
        """The host's own state: its lease (the real scripts, run by this machine's sh in the
        host's state folder), the arm journal on its disk and whether a crash kernel is loaded."""
        if "lease" in command and self.state_dir in command:
            done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30)
            return done.returncode, done.stdout
        if command == "cat /sys/kernel/kexec_crash_loaded":
            return 0, "1\n" if self.kdump_loaded else "0\n"
        if command.startswith("kexec -p -u"):
            self.kdump_loaded = False
        elif command.startswith("kdump-config load"):
            self.kdump_loaded = True
        elif "/armed" in command and command.startswith("cat "):
            return (0, self.journal) if self.journal else (1, "")
        elif "/armed" in command and "printf" in command:
            if self.journal is not None:
                return 73, ""
            self.journal = shlex.split(command.split("printf '%s' ", 1)[1])[0]
        elif "/armed" in command and command.startswith("rm -f"):
            self.journal = None
        elif "/armed" in command and "rm -f" in command:      # dropped only if the host holds the record
            if not self._holds_recorded_values(command):
                return 1, ""
            self.journal = None
        return 0, ""

    def _holds_recorded_values(self, command: str) -> bool:
        """arm_journal.disarm_command's checks, against the sysctls install_kernel_stubs keeps."""
        for path, value in re.findall(r"head -n 1 /proc/sys/(\S+)\); \[ \"\$\*\" = ('[^']*'|\S+) \]", command):
            if " ".join(str(self._sysctls.get(path.replace("/", "."))).split()) != shlex.split(value)[0]:
                return False
        return "kexec_crash_loaded" not in command or self.kdump_loaded

    @property
    def _sysctls(self) -> dict:
        return KERNEL_SYSCTLS if self.sysctls is None else self.sysctls

    def _sysctl_answer(self, command: str) -> tuple[int, str] | None:
        """kernel/sysctl.py's reads and writes, on the sysctls install_kernel_stubs keeps; a
        write of a pair in ``refuses`` does not take (the read-back shows it)."""
        if command.startswith("if [ -e /proc/sys/"):
            names = re.findall(r"printf '%s\\t' (\S+); head -n 1", command)
            return 0, "".join(f"{n} absent\n" if self._sysctls.get(n) is None else f"{n}\t{self._sysctls[n]}\n"
                              for n in names)
        if command.startswith("printf '%s\\n' ") and "/proc/sys/" in command:
            for value, path in re.findall(r"printf '%s\\n' ('[^']*'|\S+) > /proc/sys/(\S+) \|\|", command):
                pair = (path.replace("/", "."), shlex.split(value)[0])
                if pair not in self.refuses:
                    self._sysctls[pair[0]] = pair[1]
            return 0, ""
        return None

    def _reachable(self) -> bool:
        if self.up:
            return True
        if self.wedged:
            return False
        if self.reboot_after_s is not None:
            if time.monotonic() - self._down_since >= self.reboot_after_s:
                self._boot()
            return self.up
        self._probes_down += 1
        if self._probes_down >= self.reboot_after_probes:
            self._boot()
        return self.up

    def _boot(self) -> None:
        self.up, self.wedged, self._probes_down, self.kdump_loaded = True, False, 0, True
        self.boot_id = str(uuid.uuid4())
        self.dmesg = []

    def _power_action(self, action: str) -> None:
        if action in ("on", "reset") and not self.up:
            self._boot()

    # -- what the kernel does with the injection ---------------------------------------------
    def kernel_lines(self) -> list[str]:
        p = self.pfn
        lines = [f"[   93.655960] Injecting memory failure at pfn {p:#x}"]
        if self.label == "reserved kernel page":
            lines.append(f"[   93.656118] Memory failure: {p:#x}: unhandlable page.")
        lines.append(f"[   93.656139] Memory failure: {p:#x}: recovery action for {self.label}: {self.result}")
        if self.behaviour in ("panic", "hang"):
            shown = self.panic_pfn if self.panic_pfn is not None else p
            lines.append(f"[   93.657011] Kernel panic - not syncing: Memory failure: {shown:#x}: unrecoverable page")
        return lines

    def _inject(self, command: str) -> None:
        self.injected = True
        lines = self.kernel_lines()
        self.dmesg.extend(lines)
        self.console.feed("/ # \x1b[6n" + "\n".join(lines))
        if self.behaviour == "stuck":
            self.up, self.wedged = False, True
        if self.behaviour in ("panic", "hang"):
            self.up, self.kdump_loaded = False, False     # a panic ends this boot and its crash kernel
            self._down_since = time.monotonic()
            self.wedged = self.behaviour == "hang"
            if self.writes_dump and self.behaviour == "panic":
                stamp = self.dump_stamp
                if stamp in self.dumps:
                    self.rewritten.add(stamp)
                self.dumps[stamp] = StubDump(
                    dump_id=stamp, path=f"/var/crash/{stamp}", files={f"dmesg.{stamp}": 4096, f"dump.{stamp}": 30_000_000},
                    dmesg="\n".join(lines) + "\n", vmcoreinfo={"OSRELEASE": "7.3.4+deb13-cloud-amd64",
                                                              "PAGESIZE": "4096", "CRASHTIME": str(EPOCH + 1)})
        if self.ssh_drops_on_inject:
            from orchestrator.errors import RetryableInfraError
            raise RetryableInfraError("fake: connection reset by peer")

    def _sysrq(self, key: str) -> None:
        """A BREAK + key on the serial console: only a live kernel takes it (not a panicked one)."""
        if key == "c" and self.behaviour == "stuck" and self.wedged:
            self.console.feed("[  120.000001] sysrq: Trigger a crash\n"
                              "[  120.000002] Kernel panic - not syncing: sysrq triggered crash")
            self.wedged, self._down_since = False, time.monotonic()    # kdump, then back

    def add_stale_dump(self) -> None:
        stamp = "202611240101"
        self.dumps[stamp] = StubDump(
            dump_id=stamp, path=f"/var/crash/{stamp}", files={f"dmesg.{stamp}": 4096},
            dmesg=f"Kernel panic - not syncing: Memory failure: {self.pfn:#x}: unrecoverable page\n",
            vmcoreinfo={"CRASHTIME": str(EPOCH - 86400)})

    def handles(self, *, features=("hwpoison_inject", "kdump", "sol", "nmi"), destructive=True) -> HostHandles:
        host = Host(name="fake1", arch="x86_64", platform="fake", destructive=destructive, state_dir=self.state_dir,
                    ssh=SshConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA"), bmc=None,
                    features=frozenset(features), kdump=KdumpConfig(layout="debian"))
        return HostHandles(host=host, shell=self.shell, poll_shell=self.shell, power=self.power,
                           console=self.console, kdump=StubLayout(self))


class StubInjector:
    name = "hwpoison_inject"
    reports_late = False

    def unavailable_reason(self, shell, *, arch):
        return None

    def probe_command(self):
        return None

    def prepare(self, shell):
        shell.run(self.prepare_command(), timeout=10)

    def prepare_command(self):
        return "modprobe hwpoison_inject"

    def command(self, target):
        return f"echo {target.pfn:#x} > /sys/kernel/debug/hwpoison/corrupt-pfn"


def install_kernel_stubs(setattr_, sysctls: dict) -> None:
    """Target selection, injectors and sysctls have their own tests; with these stubs the
    scenario host decides what the kernel does. ``setattr_``: monkeypatch.setattr in tests."""
    from orchestrator.cycle import phases

    setattr_(sys.modules[__name__], "KERNEL_SYSCTLS", sysctls)     # what FakeLabHost's /proc/sys holds
    setattr_(phases, "make_injector", lambda name: StubInjector())
    setattr_(phases, "select_target", lambda shell, cls, arch, page_size, timeout: StubTarget(cls, 0x38830, 0x38830000))
