#!/bin/sh
# VLAB guest boot script (POSIX sh for busybox ash), run by busybox init as ::sysinit.
# Implements the GUEST CONTRACT of docs/DESIGN.md for x86_64 and aarch64 alike:
#   normal boot: disk, network, dropbear, power button, crash kernel, then "VLAB: ready";
#   crash mode (/proc/vmcore exists): hand over to crash-dump.sh, which saves and reboots.

/bin/busybox mount -t proc proc /proc
# Applet symlinks are made here, not at build time: the build host cannot run an arm64 busybox.
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug

DISK=/dev/vda
DISK_MNT=/mnt/disk
# Drivers that Debian 12's generic 6.1 kernel builds as modules and nothing autoloads here
# (no udev): the virtio PCI transport, ext4 and the crc32c its checksums need. The 7.3 cloud
# kernel has them built in; modprobe -q then fails quietly, one module at a time.
STORAGE_MODULES="virtio_pci virtio_blk ext4 crc32c_generic"
NET_MODULES="virtio_pci virtio_net"

say() { echo "VLAB: $*"; }
load_modules() { for m in "$@"; do modprobe -q "$m"; done; }
uptime_s() { read -r up _ < /proc/uptime; echo "$up"; }

# cmdline_value KEY: prints the value of KEY=value from the kernel command line.
cmdline_value() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1="*) echo "${word#*=}"; return 0 ;; esac
    done
    return 1
}

# wait_for PATH TENTHS: devices appear asynchronously after their driver loads.
wait_for() {
    n=0
    while [ ! -e "$1" ]; do
        n=$((n + 1)); [ "$n" -gt "$2" ] && return 1
        usleep 100000
    done
}

mount_disk() {
    load_modules $STORAGE_MODULES
    wait_for "$DISK" 100 || { say "error: no $DISK"; return 1; }
    # never write dumps to the wrong disk should the device order ever change
    [ "$(cat /sys/block/vda/serial)" = vlab-disk ] || { say "error: $DISK is not the vlab disk"; return 1; }
    mkdir -p "$DISK_MNT"
    mount -t ext4 "$DISK" "$DISK_MNT" || { say "error: cannot mount $DISK"; return 1; }
}

setup_network() {
    load_modules $NET_MODULES
    ip link set lo up
    wait_for /sys/class/net/eth0 100 || { say "error: no eth0"; return 1; }
    # QEMU user networking: fixed guest address, slirp gateway
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    ip route add default via 10.0.2.2
}

start_sshd() {
    keys="$DISK_MNT/ssh"
    hostkey="$keys/dropbear_ed25519_host_key"
    # The host generated an OpenSSH-format key; dropbear needs its own format. Convert once
    # and keep the copy on the disk, so the host key is the same on every boot.
    if [ ! -s "$hostkey" ]; then
        dropbearconvert openssh dropbear "$keys/ssh_host_ed25519_key" "$hostkey.tmp" >/run/dropbearconvert.log 2>&1 \
            && mv "$hostkey.tmp" "$hostkey" && sync \
            || { say "error: dropbearconvert failed: $(tail -n 1 /run/dropbearconvert.log)"; return 1; }
    fi
    mkdir -p /root/.ssh
    chmod 0700 /root /root/.ssh
    cp "$keys/authorized_keys" /root/.ssh/authorized_keys && chmod 0600 /root/.ssh/authorized_keys
    # -s: keys only; -E: log to stderr, kept off the console
    dropbear -r "$hostkey" -p 22 -s -E 2>>/run/dropbear.log || { say "error: dropbear failed"; return 1; }
    say "sshd started"
    say "info: sshd uptime=$(uptime_s)"
}

start_power_button_watcher() {
    # x86, and arm64 booted by firmware (the RAS machines: EDK2, ACPI): the ACPI power
    # button's input device(s), from the H: line of its N: block
    modprobe -q button
    modprobe -q evdev
    found=""
    for ev in $(awk '/^N: Name="Power Button"/ {p = 1} p && /^H: / {for (i = 1; i <= NF; i++) if ($i ~ /^event/) print $i; p = 0}' /proc/bus/input/devices); do
        setsid sh /etc/vlab/power-button.sh evdev "/dev/input/$ev" </dev/null >/dev/null 2>&1 &
        found=1
    done
    # arm64 -M virt with -kernel and no firmware: no ACPI, the button is a PL061 GPIO line
    if [ -z "$found" ] && [ "$(uname -m)" = aarch64 ]; then
        setsid sh /etc/vlab/power-button.sh pl061 </dev/null >/dev/null 2>&1 &
    fi
}

# mount_boot_disk: the read-only disk (serial vlab-boot) holding the kernel and crash initrd.
mount_boot_disk() {
    for serial in /sys/block/vd*/serial; do
        [ "$(cat "$serial")" = vlab-boot ] || continue
        dev=${serial%/serial}; dev=/dev/${dev##*/}
        mount -t ext4 -o ro "$dev" /boot && return 0
    done
    say "error: no boot disk (virtio serial vlab-boot)"
    return 1
}

load_crash_kernel() {
    if [ "$(cmdline_value vlab.kdump)" = 0 ]; then
        say "info: kdump disabled (vlab.kdump=0)"
        return 0
    fi
    mount_boot_disk || return 1
    t0=$(uptime_s)
    kdump-config load >/run/kexec.log 2>&1
    rc=$?
    if [ "$rc" -ne 0 ] || [ "$(cat /sys/kernel/kexec_crash_loaded)" != 1 ]; then
        say "error: kdump load failed rc=$rc: $(tail -n 1 /run/kexec.log)"
        return 1
    fi
    say "info: kdump loaded in $(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN {printf "%.1f", b - a}') s"
}

normal_boot() {
    load_modules $STORAGE_MODULES $NET_MODULES
    hostname "$(cmdline_value vlab.hostname || echo vlab)"
    if panic=$(cmdline_value vlab.panic); then sysctl -q -w kernel.panic="$panic"; fi
    [ "$(uname -m)" = x86_64 ] && { modprobe -q pvpanic_mmio; modprobe -q pvpanic_pci; }
    # The BMC's KCS interface (QEMU isa-ipmi-kcs): at a panic the kernel writes "OS Critical
    # Stop" and the panic text into the SEL (panic_op=string is on the command line). Only
    # kernels with IPMI drivers (the generic flavour, not cloud) have these modules.
    [ "$(uname -m)" = x86_64 ] && { modprobe -q ipmi_msghandler; modprobe -q ipmi_si; }
    setup_network
    mount_disk && mkdir -p "$DISK_MNT/crash" && mount --bind "$DISK_MNT/crash" /var/crash
    # The orchestrator's own records on the host (lease, arm journal) must outlive panics
    # and reboots, as /var/lib does on a server: keep them on the persistent disk too.
    mkdir -p "$DISK_MNT/orchestrator" /var/lib/memfail-orchestrator \
        && mount --bind "$DISK_MNT/orchestrator" /var/lib/memfail-orchestrator
    start_sshd
    start_power_button_watcher
    if load_crash_kernel; then
        touch /run/vlab-ready
        say "ready"
        say "info: ready uptime=$(uptime_s)"
    fi
}

if [ -e /proc/vmcore ]; then
    . /etc/vlab/crash-dump.sh
else
    normal_boot
fi
