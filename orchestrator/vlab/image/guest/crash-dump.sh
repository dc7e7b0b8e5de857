# VLAB crash mode, sourced by rc.sh in the kdump kernel (/proc/vmcore exists).
# Writes the Debian kdump-tools layout on the persistent disk, then reboots:
#   /var/crash/<YYYYMMDDHHMM>/dmesg.<stamp>       vmcore-dmesg
#   /var/crash/<YYYYMMDDHHMM>/vmcoreinfo.<stamp>  the VMCOREINFO note text
#   /var/crash/<YYYYMMDDHHMM>/dump.<stamp>        makedumpfile -l -d 31 (via dump-incomplete)
#   or dump-unsupported.<stamp> with the reason, where makedumpfile cannot read the vmcore
#   (arm64 7.3: 4K pages with 52-bit VA). A makedumpfile that ran out of room leaves
#   dump-incomplete behind, as kdump-tools does: a full disk is no reason "by design".
#
# Lab faults, for the drills (tests/drills/): one-shot flag files on the persistent disk
# (/mnt/disk/vlab-fault/<name> on the running guest), off unless present; each is removed
# as it is taken, so the crash after it is a normal one again.
#   crash-hang     the crash kernel hangs before saving anything: no dump, no reboot
#   dump-truncate  makedumpfile "dies" part way: dump-incomplete is left behind, no dump.<stamp>

say "crash kernel up"
say "info: crash kernel uptime=$(uptime_s)"

FAULTS="$DISK_MNT/vlab-fault"

# take_fault NAME: true (once) when the lab fault NAME is set; removed before it acts.
take_fault() {
    [ -e "$FAULTS/$1" ] || return 1
    rm -f "$FAULTS/$1"
    sync
    say "info: lab fault $1 taken"
}

save_dump() {
    mount_disk || return 1
    if take_fault crash-hang; then
        while :; do sleep 3600; done
    fi
    stamp=$(date +%Y%m%d%H%M)
    dir="$DISK_MNT/crash/$stamp"
    mkdir -p "$dir"
    vmcore-dmesg /proc/vmcore >"$dir/dmesg.$stamp" 2>/tmp/vmcore-dmesg.err
    say "info: vmcore-dmesg rc=$? lines=$(wc -l <"$dir/dmesg.$stamp")"
    # The note sits at the start of the ELF core: the first 64 KiB hold it whole.
    head -c 65536 /proc/vmcore | strings | grep -E '^[A-Z][A-Z0-9_-]*(\([^)]*\))?=' >"$dir/vmcoreinfo.$stamp"
    sync
    rm -f "$dir/dump-incomplete"
    # kdump-tools uses -c (zlib); under TCG that takes ~14 s for a 1 GB guest against ~2 s
    # with -l (lzo, the same kdump-compressed format), so -l unless vlab.dumpcompress=c.
    compress=-$(cmdline_value vlab.dumpcompress || echo l)
    if take_fault dump-truncate; then
        head -c 4194304 /proc/vmcore >"$dir/dump-incomplete"
        say "info: makedumpfile killed part way (lab fault), dump-incomplete left"
    elif makedumpfile "$compress" -d 31 /proc/vmcore "$dir/dump-incomplete" >/tmp/makedumpfile.log 2>&1; then
        mv "$dir/dump-incomplete" "$dir/dump.$stamp"
        say "info: makedumpfile ok size=$(stat -c %s "$dir/dump.$stamp")"
    else
        rc=$?
        if grep -qiE "no space left|can.t write" /tmp/makedumpfile.log; then
            say "info: makedumpfile failed rc=$rc: no room on the disk, dump-incomplete left"
        else
            rm -f "$dir/dump-incomplete"
            reason=$(grep -v '^$' /tmp/makedumpfile.log | tail -n 3 | tr '\n' ' ')
            echo "makedumpfile $compress -d 31 failed (rc=$rc): $reason" >"$dir/dump-unsupported.$stamp"
            say "info: makedumpfile failed rc=$rc, wrote dump-unsupported.$stamp"
        fi
    fi
    sync
    say "dump saved"
    say "info: dump saved to /var/crash/$stamp uptime=$(uptime_s)"
    umount "$DISK_MNT"
}

save_dump || say "error: dump not saved"
sync
say "crash kernel rebooting"
reboot -f
