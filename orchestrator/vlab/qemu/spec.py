"""What one lab machine is (``MachineSpec``) and the QEMU command line that makes it.

The command line is the whole hardware description: board, CPU model, accelerator, the
guest image's kernel and initrd, the serial console and QMP sockets, the forwarded SSH
port and the two disks. ``machine.py`` starts and stops processes running it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.vlab.image.manifest import ImageManifest
from orchestrator.vlab.qemu import einj_table

#: Per arch: QEMU binary and the board. x86: q35 with an Intel CPU model, because the MCE
#: injection path needs Intel severity rules; pvpanic reports panics without kdump.
_BOARD = {
    "x86_64": ("qemu-system-x86_64", ["-machine", "q35", "-device", "pvpanic"]),
    "aarch64": ("qemu-system-aarch64", ["-machine", "virt,gic-version=3"]),
}
#: arm64 TCG: emulating the architected pointer-authentication cipher (QARMA) doubles the
#: boot time; pauth-impdef=on keeps pauth but with QEMU's cheap implementation-defined hash.
_CPU = {("x86_64", "tcg"): "max,vendor=GenuineIntel", ("aarch64", "tcg"): "max,pauth-impdef=on",
        ("x86_64", "kvm"): "host", ("aarch64", "kvm"): "host"}


@dataclass(frozen=True)
class MachineSpec:
    name: str
    arch: str                          # x86_64 | aarch64
    machine_dir: Path
    image: ImageManifest
    ssh_port: int                      # host port forwarded to the guest's :22
    memory_mb: int = 1024
    smp: int = 2
    accel: str = "tcg"                 # tcg | kvm (see accel.py)
    extra_kernel_args: tuple[str, ...] = ()
    crashkernel: str = "256M"
    #: TCG translation cache cap (MiB); None = QEMU's default (up to 1 GiB). Measured: ~345 MB of
    #: a 766 MB RSS after one kdump cycle of a 768 MB guest was not guest RAM
    tcg_cache_mb: int | None = 128
    #: "single" (all vCPUs round-robin on one host thread) or "multi" (QEMU's default: one
    #: thread per vCPU). Single by default: with multi-threaded TCG the 7.3 guest sometimes dies
    #: at boot in the kernel's live code patching (`Oops: int3` in sched_clock_cpu after
    #: "sched_clock: Marking stable") when two vCPUs run the patched code concurrently on a
    #: loaded host — seen in the lab and in CI after a reset; and two guests on two host cores
    #: gain nothing from MTTCG.
    tcg_thread: str = "single"
    address: str = "127.0.0.1"        # where the SSH port is forwarded on the host
    #: every reboot starts a new QEMU process, so guest RAM touched by earlier boots is
    #: given back to the host (cold_reboot.py says why); False: QEMU's warm reset
    cold_reboot: bool = True
    #: x86: the platform offers APEI EINJ, its firmware played by the BMC (einj_table.py)
    einj: bool = True
    #: aarch64 RAS platform: the QEMU 11 sysroot (image/ras_qemu.py) this machine runs, with
    #: firmware (EDK2, so ACPI with HEST/GHES) and ras=on; None: the system QEMU, no GHES
    ras_qemu: str | None = None

    def __post_init__(self) -> None:
        if self.arch not in _BOARD:
            raise ConfigError(f"machine {self.name}: unknown arch {self.arch!r}")
        if self.accel not in ("tcg", "kvm"):
            raise ConfigError(f"machine {self.name}: accel must be tcg or kvm, not {self.accel!r}")
        if self.tcg_thread not in ("single", "multi"):
            raise ConfigError(f"machine {self.name}: tcg_thread must be single or multi, not {self.tcg_thread!r}")
        if self.ras_qemu is not None and self.arch != "aarch64":
            raise ConfigError(f"machine {self.name}: the RAS platform (QEMU 11, GHES) is aarch64 only")
        if self.image.arch != self.arch:
            raise ConfigError(f"machine {self.name}: {self.image.arch} image for an {self.arch} machine")


def offers_einj(spec: MachineSpec) -> bool:
    return spec.einj and spec.arch == "x86_64"


#: x86 machines have a BMC interface in band (KCS; the BMC process serves ipmi.sock, see
#: vlab/bmc/kcs_link.py). The kernel sends its panic text to the SEL (panic_op=string) and,
#: with a crash kernel loaded, only if the panic notifiers run before kdump
#: (crash_kexec_post_notifiers; sel-in-band.md: without it no record arrives).
_SEL_KERNEL_ARGS = {"x86_64": ("crash_kexec_post_notifiers", "ipmi_msghandler.panic_op=string")}
IPMI_SOCKET = "ipmi.sock"


def kernel_cmdline(spec: MachineSpec) -> str:
    return " ".join([f"console={spec.image.console}", f"crashkernel={spec.crashkernel}",
                     f"vlab.hostname={spec.name}",
                     *(einj_table.kernel_args(spec.memory_mb) if offers_einj(spec) else []),
                     *_SEL_KERNEL_ARGS.get(spec.arch, ()), *spec.extra_kernel_args])


def _ipmi_devices(spec: MachineSpec) -> list[str]:
    """QEMU connects to the BMC (reconnect=1: each new QEMU of a cold reboot, a BMC restart)."""
    if spec.arch != "x86_64":
        return []
    return ["-chardev", f"socket,id=ipmi0,path={spec.machine_dir / IPMI_SOCKET},reconnect=1",
            "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0", "-device", "isa-ipmi-kcs,bmc=bmc0"]


def _accel_option(spec: MachineSpec) -> str:
    if spec.accel != "tcg":
        return spec.accel
    return ",".join(["tcg", f"thread={spec.tcg_thread}",
                     *([f"tb-size={spec.tcg_cache_mb}"] if spec.tcg_cache_mb else [])])


def _qemu_and_board(spec: MachineSpec) -> tuple[list[str], list[str], str]:
    """How QEMU is started, the board options and the NIC's extra options. A RAS machine:
    ras=on needs firmware (QEMU 11.1.3 crashes at start without -bios), and its
    virtio-net-pci would want iPXE's efi-virtio.rom, which EDK2's own driver makes unneeded."""
    if spec.ras_qemu is None:
        binary, board = _BOARD[spec.arch]
        return [binary], board, ""
    from orchestrator.vlab.image.ras_qemu import RasQemu
    ras = RasQemu.load(spec.ras_qemu)
    return ras.argv(), ["-machine", "virt,gic-version=3,ras=on", "-bios", str(ras.firmware)], ",romfile="


def command_line(spec: MachineSpec, *, disk: Path, serial_socket: Path, qmp_socket: Path,
                 events_socket: Path, pidfile: Path) -> list[str]:
    s = spec
    qemu, board, nic = _qemu_and_board(s)
    return [
        *qemu, "-name", s.name, *board, "-accel", _accel_option(s), "-cpu", _CPU[(s.arch, s.accel)],
        "-m", str(s.memory_mb), "-smp", str(s.smp),
        "-nodefaults", "-no-user-config", "-display", "none",
        # panic=none: the panic event is still emitted, but the guest keeps running so the
        # whole panic text reaches the console (panic=pause cuts it); set at start, not
        # via set-action afterwards, so a panic during early boot is covered too
        "-action", "panic=none",
        # every reset ends the process and a watcher on events.sock boots a new one (cold_reboot.py)
        *(["-action", "reboot=shutdown", "-qmp", f"unix:{events_socket},server=on,wait=off"]
          if s.cold_reboot else []),
        "-kernel", str(s.image.kernel), "-initrd", str(s.image.initrd), "-append", kernel_cmdline(s),
        # telnet=on: the BMC's SOL break reaches the UART as a serial BREAK (bmc/telnet.py)
        "-chardev", f"socket,id=ser0,path={serial_socket},server=on,wait=off,telnet=on", "-serial", "chardev:ser0",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off", *_ipmi_devices(s),
        "-netdev", f"user,id=n0,hostfwd=tcp:{s.address}:{s.ssh_port}-:22", "-device", f"virtio-net-pci,netdev=n0{nic}",
        # the persistent disk first, so that the guest names it vda; the boot disk follows
        "-drive", f"file={disk},format=raw,if=none,id=d0,cache=unsafe",
        "-device", "virtio-blk-pci,drive=d0,serial=vlab-disk",
        "-drive", f"file={s.image.boot_disk},format=raw,if=none,id=d1,readonly=on",
        "-device", "virtio-blk-pci,drive=d1,serial=vlab-boot",
        "-pidfile", str(pidfile),
        *(einj_table.qemu_args(s.machine_dir, s.memory_mb, s.image.initrd) if offers_einj(s) else []),
    ]
