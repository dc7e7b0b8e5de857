"""Ways to make the kernel run memory_failure() on a target page, as sh commands.

``command()`` is a single line that the cycle fires detached: it may never return (panic). Its
exit status and stderr are what the kernel said about the write: ``EBUSY`` ("Device or
resource busy") is memory_failure()'s -EBUSY for an Ignored page (kernel-7.3-behaviour.md).
Sources: kernel-facts.md §3 (hwpoison-inject, hard_offline_page), §4 (EINJ); mce-inject from
arch/x86/kernel/cpu/mce/inject.c (linux-next).
"""

from __future__ import annotations

import abc

from orchestrator.errors import ConfigError
from orchestrator.kernel import einj
from orchestrator.kernel.pages import Target
from orchestrator.protocols.shell import CommandResult, ShellProtocol

#: For mounting debugfs and loading a module (a modprobe may read the disk).
PREPARE_TIMEOUT_S = 60.0
DEBUGFS = einj.DEBUGFS
_MOUNT_DEBUGFS = (f"grep -q ' {DEBUGFS} debugfs ' /proc/mounts || "
                  f"mount -t debugfs debugfs {DEBUGFS}")


class Injector(abc.ABC):
    name: str
    feature: str                      # inventory feature that declares it usable
    needs: str                        # the file (after prepare) whose absence means "unusable"
    #: The kernel handles the error inside the injecting write (hwpoison, hard_offline), or
    #: later, when the platform's machine check or firmware report arrives (EINJ, mce-inject):
    #: how long a host that kept running may still panic after the injection returned.
    reports_late: bool = False
    #: How the error reaches memory_failure(): "software" (a write on the host calls it) or
    #: "machine-check" (the platform raises an x86 #MC; uc_decode_notifier() calls it from the
    #: mce workqueue). semantics.yaml may record a different outcome per delivery.
    delivery: str = "software"
    module: str | None = None         # loadable module providing it, if any
    setup: str | None = None          # sh run after the file exists (hwpoison's page filter)

    def unavailable_reason(self, shell: ShellProtocol, *, arch: str) -> str | None:
        """None if usable; otherwise why not, in words an operator can act on."""
        return self._verdict(shell.run(self.probe_command(), timeout=30, check=False).stdout, arch)

    def probe_command(self) -> str | None:
        """The read ``unavailable_reason`` ends with (for protocols/shell_batch.py); None: no command."""
        probe = f"[ -e {self.needs} ] && echo present; {einj.lockdown_probe()}"
        if self.module:
            probe += (f"; (grep -q '^{self.module} ' /proc/modules || modinfo {self.module} || "
                      f"find /lib/modules/$(uname -r) -name '{self.module.replace('_', '[-_]')}.ko*' "
                      f"| grep -q .) >/dev/null 2>&1 && echo module")
        return probe

    def _verdict(self, probe_output: str, arch: str) -> str | None:
        locked = einj.lockdown_reason(self.name, probe_output) if self.needs.startswith(DEBUGFS) else None
        if locked:
            return locked
        if "present" in probe_output.split() or (self.module and "module" in probe_output.split()):
            return None
        return f"{self.name}: {self.needs} missing" + (
            f" and no {self.module} module" if self.module else "")

    def prepare(self, shell: ShellProtocol) -> None:
        """Make ``needs`` exist (mount debugfs, load the module), then run ``setup``; idempotent."""
        command = self.prepare_command()
        if command:
            shell.run(command, timeout=PREPARE_TIMEOUT_S)

    def prepare_command(self) -> str | None:
        """The command ``prepare`` runs (for protocols/shell_batch.py); None: nothing to prepare."""
        steps = [_MOUNT_DEBUGFS] if self.needs.startswith(DEBUGFS) else []
        if self.module:
            steps.append(f"[ -e {self.needs} ] || modprobe {self.module}")
        if self.setup:
            steps.append(self.setup)
        return "; ".join(steps) or None

    @abc.abstractmethod
    def command(self, target: Target) -> str: ...

    def refusal(self, result: CommandResult) -> str | None:
        """Why the kernel or firmware refused an injection that returned (an ``einj.Unusable``
        naming the remedy and whom to blame), or None: a non-zero exit may be the kernel's
        answer itself (hwpoison's EBUSY for an Ignored page)."""
        if self.needs.startswith(DEBUGFS) and "Operation not permitted" in result.stderr:
            return einj.Unusable(f"{self.name}: the kernel refused the debugfs write (EPERM): {einj.SECURE_BOOT}")
        return None


class FirmwareInjector(Injector):
    """The platform firmware reports the error (through the BMC: protocols/firmware.py), as the
    hardware would; nothing is written on the host. ``command`` is never fired: the cycle asks
    ``HostHandles.firmware`` to report ``path``/``severity`` at the target's physical address."""
    reports_late = True
    path: str                          # protocols.firmware.SEVERITIES key: mce | ghes
    severity: str
    needs = ""

    def unavailable_reason(self, shell, *, arch):
        return None                    # the BMC says so when its firmware lacks the path

    def probe_command(self):
        return None

    def prepare(self, shell):
        pass

    def prepare_command(self):
        return None

    def command(self, target):
        raise NotImplementedError(f"{self.name} is reported by the firmware, not run on the host")


class HwpoisonInject(Injector):
    """debugfs hwpoison/corrupt-pfn: memory_failure(pfn, MF_SW_SIMULATED). With
    corrupt-filter-enable 1 it silently skips kernel pages, so ``setup`` turns the filter off."""
    name, feature, module = "hwpoison_inject", "hwpoison_inject", "hwpoison_inject"
    needs = f"{DEBUGFS}/hwpoison/corrupt-pfn"
    setup = f"echo 0 > {DEBUGFS}/hwpoison/corrupt-filter-enable"

    def command(self, target):
        return f"echo {target.pfn:#x} > {self.needs}"


class HardOfflinePage(Injector):
    """sysfs hard_offline_page takes a PHYSICAL address (the series author's own selftest)."""
    name = feature = "hard_offline_page"
    needs = "/sys/devices/system/memory/hard_offline_page"

    def command(self, target):
        return f"echo {target.phys_addr:#x} > {self.needs}"


class Einj(Injector):
    """ACPI APEI EINJ (kernel/einj.py): memory uncorrectable non-fatal (0x10) at param1, 4K mask,
    notrigger; the platform raises it (a machine check, or a GHES record) when it is ready."""
    name = feature = module = "einj"
    error_type = 0x10
    reports_late = True
    delivery = "machine-check"        # in the lab; firmware-first platforms report through GHES
    needs = f"{einj.EINJ_DIR}/error_inject"

    def unavailable_reason(self, shell, *, arch):
        return einj.unusable(self.name, self.error_type, shell.run(einj.probe_command(), timeout=60,
                                                                    check=False).stdout)

    def probe_command(self):
        return einj.probe_command()

    def command(self, target):
        return einj.inject_command(self.error_type, target.phys_addr)

    def refusal(self, result):
        return einj.refusal(self.name, result.exit_code, result.stderr)


class EinjFatal(Einj):
    """EINJ memory uncorrectable fatal (0x20): the platform stops the machine (a machine check
    with processor context corrupt, or a fatal GHES record), whatever the sysctls say."""
    name, error_type = "einj_fatal", 0x20


class MceInject(Injector):
    """x86 mce-inject debugfs, "hw" mode: an SRAO memory-scrub record (status 0xbd000000000000c0,
    misc 0x8c = physical address, LSB 12) raised as a real #MC on cpu 0 via bank 1.

    "sw" mode only decodes (mce_log() with severity 0: uc_decode_notifier() ignores it), so it
    never reaches memory_failure(). "hw" mode writes the MCi_STATUS/ADDR/MISC MSRs, which only
    AMD allows (HWCR.McStatusWrEn); MCG_STATUS is not a debugfs file: do_inject() sets
    MCIP|EIPV, plus RIPV because PCC is clear. Writing ``bank`` last fires the injection."""
    name, feature, module = "mce_inject", "mce_inject", "mce_inject"
    delivery = "machine-check"
    needs = f"{DEBUGFS}/mce-inject/bank"
    reports_late = True
    status, misc, bank = 0xbd000000000000c0, 0x8c, 1

    def unavailable_reason(self, shell, *, arch):
        if arch != "x86_64":
            return f"mce_inject: x86 only (host is {arch})"
        cpu = shell.run("grep -m1 -E '^(vendor_id|flags)' /proc/cpuinfo; "
                        "grep -m1 -o -w hypervisor /proc/cpuinfo", timeout=30, check=False).stdout
        if "AuthenticAMD" not in cpu and "HygonGenuine" not in cpu:
            return ("mce_inject: its 'hw' injection writes MCA status MSRs, which only AMD CPUs "
                    "accept; use einj, or the hypervisor's MCE injection on a virtual machine")
        if "hypervisor" in cpu.split():
            return ("mce_inject: under a hypervisor the MCA MSR writes are dropped (QEMU keeps "
                    "only 0 in MCi_STATUS); inject from the hypervisor instead")
        return super().unavailable_reason(shell, arch=arch)

    def command(self, target):
        d = f"{DEBUGFS}/mce-inject"
        return (f"echo hw > {d}/flags && echo 0 > {d}/cpu && echo {self.status:#x} > {d}/status && "
                f"echo {target.phys_addr:#x} > {d}/addr && echo {self.misc:#x} > {d}/misc && "
                f"echo {self.bank} > {d}/bank")


class QemuMce(FirmwareInjector):
    """Lab only: the lab BMC's firmware raises an SRAO memory-scrub machine check at the target's
    physical address through QEMU's HMP ``mce`` (vlab/qemu/mce.py; needs the lab's
    ``-cpu max,vendor=GenuineIntel``, an AMD-looking guest panics on it). The kernel takes it
    as a real #MC: uc_decode_notifier() -> memory_failure(pfn, 0) in the mce workqueue.
    A real BMC has no such request: it answers "not supported" (completion 0xC1)."""
    name = feature = "qemu_mce"
    path, severity = "mce", "srao"
    delivery = "machine-check"

    def unavailable_reason(self, shell, *, arch):
        if arch != "x86_64":
            return f"qemu_mce: x86 machine checks only (host is {arch})"
        return None


class Ghes(FirmwareInjector):
    """Firmware-first (arm64 RAS servers): the platform reports a CPER memory error for the page
    through GHES; the kernel's ghes_proc() queues memory_failure() for a recoverable error,
    panics at once on a fatal one ("GHES: Fatal hardware error") and only logs a corrected one."""
    name, feature, path, severity = "ghes", "ghes", "ghes", "recoverable"


class GhesFatal(Ghes):
    name, severity = "ghes_fatal", "fatal"


class GhesCorrected(Ghes):
    name, severity = "ghes_corrected", "corrected"


_ALL = {cls.name: cls for cls in (HwpoisonInject, HardOfflinePage, Einj, EinjFatal, MceInject, QemuMce,
                                   Ghes, GhesFatal, GhesCorrected)}
INJECTORS: tuple[str, ...] = tuple(_ALL)


def injector(name: str) -> Injector:
    try:
        return _ALL[name]()
    except KeyError:
        raise ConfigError(f"unknown injector {name!r}; known: {', '.join(INJECTORS)}") from None
