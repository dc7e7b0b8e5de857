#!/bin/sh
# VLAB power-button watcher: what logind/acpid do on a server. QMP system_powerdown
# (IPMI "soft off") only presses the virtual button; this turns the press into poweroff.
#   power-button.sh evdev /dev/input/eventN   x86: ACPI button, blocks on its input device
#   power-button.sh pl061                     arm64 virt: see below

wait_evdev() {
    # devtmpfs makes the device node asynchronously after `modprobe evdev` returns: under a
    # loaded TCG host dd once found no node and the watcher exited (the button then did nothing)
    n=0
    while [ ! -e "$1" ] && [ "$n" -lt 100 ]; do usleep 100000; n=$((n + 1)); done
    # Any event from the power button's own input device is a press: block, no polling.
    dd if="$1" of=/dev/null bs=24 count=1 2>/dev/null
}

wait_pl061() {
    # With -kernel and no firmware, -M virt wires the button to PL061 GPIO line 3 (a DT
    # gpio-keys node), and the cloud kernel has no gpio-keys driver. Exporting the line
    # with a rising edge gives it an IRQ, whose count in /proc/interrupts moves on a press.
    chip=""
    for c in /sys/class/gpio/gpiochip*; do
        case "$(cat "$c/label")" in *pl061*) chip=$c ;; esac
    done
    [ -n "$chip" ] || { echo "VLAB: error: no PL061 GPIO chip, power button unavailable" >/dev/console; exit 1; }
    gpio=$(( $(cat "$chip/base") + 3 ))
    echo "$gpio" >/sys/class/gpio/export
    echo rising >"/sys/class/gpio/gpio$gpio/edge"
    # Fork-free polling keeps the idle cost low under TCG: the loop below uses builtins
    # only, and `read -t` on a FIFO that nobody writes is the sleep.
    mkfifo /run/power-button.fifo
    exec 3<>/run/power-button.fifo
    irq_line; baseline=$line
    while :; do
        read -r -t 2 _ <&3
        irq_line
        [ "$line" != "$baseline" ] && return 0
    done
}

# irq_line: sets $line to the PL061 GPIO line of /proc/interrupts (builtins only).
irq_line() {
    line=""
    while read -r l; do
        case "$l" in *gpiolib*) line=$l ;; esac
    done </proc/interrupts
}

case "$1" in
evdev) wait_evdev "$2" || exit 1 ;;
pl061) wait_pl061 ;;
*) echo "usage: $0 evdev DEVICE | pl061" >&2; exit 2 ;;
esac
echo "VLAB: power button -> poweroff" >/dev/console
sync
poweroff -f
