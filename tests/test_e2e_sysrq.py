"""End to end on an aarch64 lab machine, whose board has no NMI: a wedged host is crashed
into kdump by a serial BREAK + SysRq c sent over its BMC's SOL, and comes back without a
power cycle (cycle/recovery.py through the real transports, BMC, QEMU and guest kernel)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.cycle.hostwait import read_boot_facts
from orchestrator.cycle.recovery import recover_wedged_host
from orchestrator.fleet.host_handles import open_host

pytestmark = [pytest.mark.vlab, pytest.mark.aarch64]

# Userspace wedged, kernel alive: dropbear's listener (the one whose parent is init) is
# stopped, so new SSH connections get no banner; this session's own child carries on.
STOP_SSHD = "for p in $(pidof dropbear); do [ $(cut -d' ' -f4 /proc/$p/stat) = 1 ] && kill -STOP $p; done; echo ok"


def test_wedged_arm_host_is_crashed_into_kdump_by_break_and_sysrq_without_power_cycle(vlab_arm, tmp_path):
    host = load_inventory(vlab_arm).hosts[0]
    assert "sol_break" in host.features and "nmi" not in host.features
    host = replace(host, features=host.features | {"nmi"})   # ask for the NMI anyway: the BMC refuses it
    with open_host(host, tmp_path / "host") as session:
        h = session.handles
        assert h.console.wait_until_healthy(30), h.console.last_failure
        before = read_boot_facts(h.shell)
        since = h.console.mark()
        assert h.shell.run(STOP_SSHD, timeout=30).stdout.strip() == "ok"
        log: list[str] = []
        after = recover_wedged_host(h, before.boot_id, 150, log, nmi_grace_s=90)
        h.shell.close()
        assert after.boot_id != before.boot_id
        assert log[:2] == ["wedged: the BMC does not support NMI",
                           "wedged: serial BREAK + SysRq c sent over SOL (no NMI)"], log
        assert not any("power cycle" in line for line in log), log
        console = [line.text for line in h.console.lines(since)]
        assert any("sysrq: Trigger a crash" in text for text in console)
        assert any("Kernel panic - not syncing: sysrq triggered crash" in text for text in console)
        assert any("VLAB: dump saved" in text for text in console)
        dumps = h.kdump.list_dumps(h.shell)
        dump = h.kdump.collect(h.shell, sorted(dumps, key=h.kdump.sort_key)[-1])
        assert "Kernel panic - not syncing: sysrq triggered crash" in dump.dmesg
