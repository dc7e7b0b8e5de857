"""Every timing and sizing knob of the orchestrator and its virtual lab, with the measurement
or reason behind its value. Change one here, never at its point of use.

A playbook's per-case deadlines (preflight, arm, target, inject, panic, survive, dump,
wedge, nmi, collect, restore) are not here: they belong to the case (config/playbook.py
holds their defaults). Protocol constants that are not choices (IPMI command numbers, the
SOL packet size) stay beside the code that speaks the protocol.
"""

from __future__ import annotations

# -- waiting for a host (cycle/hostwait.py) --------------------------------------------------
#: Period of new SSH probes while waiting: "reboot noticed after sshd accepts" is at most
#: this plus one login (0.2 s on an idle lab guest, up to ~0.8 s while it loads its crash
#: kernel right after sshd starts; target <= 1 s).
SSH_POLL_S = 0.1
#: After HEDGE_FAST_S of waiting (at once when waiting for a new boot, which no host reaches
#: in HEDGE_FAST_S), new probes start every SSH_POLL_SLOW_S. A host is back
#: 9-12 s after a panic (lab) or minutes (servers); on the lab the probes mostly stall on
#: their banner (2 s, at most 8 in flight), which paces them at ~4 a second anyway. What
#: it saves: 1,000 simulated hosts probing at 10 Hz kept the controller's one core busy
#: (bench/bench_fleet.py). "Reboot noticed" grows by at most SSH_POLL_SLOW_S - SSH_POLL_S.
HEDGE_FAST_S = 3.0
SSH_POLL_SLOW_S = 0.25
#: Boot-probe starts per second for all the hosts one controller process waits on
#: (cycle/probe_pace.py). A probe of a host not up yet costs ~0.4 ms of the controller with
#: 1,000 simulated hosts waiting, ~1.7 ms with Fabric (its refused connection alone 1.4 ms):
#: 500 a second holds the waiting to ~0.2 core simulated, under one core with Fabric. Below
#: 125 hosts waiting at once (SSH_POLL_SLOW_S) nothing waits for a turn; 1,000 hosts each
#: probe every 2 s, against reboots of 3-10 min on servers.
BOOT_PROBES_PER_S = 500.0
#: The probe is three cats and a date: a host that needs longer is not up yet.
PROBE_TIMEOUT_S = 5.0
#: Hedged probes at once (each may stall up to its connect + banner timeouts). Below
#: OpenSSH's default MaxStartups (10 unauthenticated connections) so that a real server's
#: sshd never starts dropping them; while probes stall the period stretches (8 per banner timeout).
MAX_PROBES_IN_FLIGHT = 8
#: Between two preflight attempts after a transient failure (a late banner, a dropped
#: connection): preflight changes nothing, so it is retried until its own deadline.
PREFLIGHT_RETRY_PAUSE_S = 1.0
#: The host's facts when a run first reaches it (fleet/facts.py): as long as a case's
#: preflight may wait, so that one slow first connection does not lose the host for the run.
HOST_FACTS_DEADLINE_S = 60.0
#: The lease a run takes for the slab semantics probe when it first reaches a host (cycle/
#: expectations.py): the probe measured ~1 s on a TCG lab guest (scan + one injection), a
#: minute leaves room for a slow host; the first case then takes the lease for its own budget.
SEMANTICS_PROBE_TTL_S = 60.0

# -- the shell used while a host reboots (fleet/host_handles.py) -----------------------------
#: While a host reboots, SSH attempts are hedged (a new one every SSH_POLL_S), so a stalled
#: attempt costs nothing but a thread; it must still end: slirp and NAT accept TCP for a dead
#: guest, and a connection made before the guest listens stalls (slirp retries the guest
#: after 3 s), so only the banner tells. 2 s leaves a slow sshd room to answer.
POLL_CONNECT_TIMEOUT_S = 3.0
POLL_BANNER_TIMEOUT_S = 2.0
POLL_COMMAND_TIMEOUT_S = 15.0

# -- observing an injection (cycle/observe.py, cycle/after_panic.py) -------------------------
#: Consecutive failed SSH probes after which the host counts as gone (panicked or hung).
LOST_AFTER_FAILURES = 2
#: After a survive case's injection returned, how long a late panic still gets to show. An
#: injector whose error the kernel handles inside the injecting write (hwpoison-inject,
#: hard_offline_page) panics before the write returns: its line reached the console 0.1 ms
#: after it completed (bench_orchestrator), so 0.5 s is ample. Machine checks and firmware
#: reports (EINJ, mce-inject) arrive asynchronously: they get 2 s.
SETTLE_S = 2.0
SETTLE_SYNC_S = 0.5
#: Between two looks at whether the detached injection returned: one short SSH command each.
INJECTION_POLL_S = 0.25
#: The controller and host clocks may disagree a little; CRASHTIME has 1 s resolution.
CLOCK_SLACK_S = 2.0

# -- bringing a wedged host back (cycle/recovery.py) -----------------------------------------
#: Power cycles after the NMI or the BREAK + SysRq, each given its share of the wedge deadline; a host that two
#: cold starts do not bring back needs a person, not a third cycle.
MAX_POWER_CYCLES = 2

# -- kdump (kernel/kdump.py) -----------------------------------------------------------------
#: Reloading a crash kernel a case unloaded (cycle/phases.py restore): kexec -p reads ~100 MB
#: and takes ~10 s under TCG, more on a busy host; not held to the case's restore deadline,
#: because a reload cut short leaves the next case's preflight waiting for it.
KDUMP_RELOAD_TIMEOUT_S = 60.0
#: One listing or read of the dump folder; a VMCOREINFO read is a few KiB over SSH.
KDUMP_COMMAND_TIMEOUT_S = 60.0

# -- transports ------------------------------------------------------------------------------
#: fire_detached: the command starts once the launching SSH call's shell has exited and sshd
#: has reaped it, and this long after, for sshd's exit status to leave before the command may
#: kill the kernel. A flat 0.3 s before was ~0.2 s of every case's wall time on a lab guest.
DETACH_GRACE_S = 0.1
#: ... but never later than this after the launch (a launcher pid that will not go away).
DETACH_WAIT_MAX_S = 1.0
#: Past a call's own timeout, before its transport is torn down (a frozen peer).
SSH_WATCHDOG_GRACE_S = 5.0
#: Seconds before SOL reconnect attempts 1, 2, 3, 4+ in a row.
SOL_RECONNECT_BACKOFF = (0.2, 1.0, 2.0, 5.0)
#: A BMC without a "power cycle" directive: pyghmi polls about once a second for "off".
CYCLE_FALLBACK_OFF_POLLS = 30

# -- the virtual lab (vlab/) -----------------------------------------------------------------
#: Guest RAM and TCG settings, measured with bench/bench_vlab_boot.py (7.3 guest, 2-core host):
#: 1024 MB guests used 740-800 MB of host RSS after one kdump cycle, 768 MB guests with QEMU's
#: defaults 766 MB, of which only ~420 MB was guest RAM: the rest is mostly TCG's translation
#: cache, which a 128 MiB cap bounds (669 MB, boot->SSH 6.0 s, panic->SSH 14 s). 768 MB still
#: holds crashkernel=256M with 440 MB usable for the page-class targets.
LAB_MEMORY_MB = 768
LAB_TCG_CACHE_MB = 128
#: One host thread for all vCPUs: multi-threaded TCG crashed 7.3 guests at boot after a
#: reset (`Oops: int3` in sched_clock_cpu, the kernel's live code patching), in CI too.
LAB_TCG_THREAD = "single"
#: TCG boot is 7-8 s alone, 15 s with 3 guests on 2 cores; arm64 kdump load adds seconds:
#: leave room for a busy host.
LAB_READY_TIMEOUT_S = 300.0
#: A TCG boot to poweroff takes ~4.5 s here; a working KVM needs far less than this.
KVM_PROBE_TIMEOUT_S = 20.0

# -- host leases (fleet/lease.py) ------------------------------------------------------------
#: One lease command: a few file operations on the host, waiting at most 10 s for the lock.
LEASE_COMMAND_TIMEOUT_S = 20.0
#: The lease lock is held for one short command (milliseconds); one older than this was left
#: by a command killed mid-way (a dropped SSH session) and is removed.
LEASE_LOCK_STALE_S = 30
#: A lease lives this long unless renewed; the holder renews it every LEASE_RENEW_S. A host
#: that panics cannot be renewed on until it is back, so before an injection the lease is
#: stretched over the case's remaining deadlines (fleet/runner.py).
LEASE_TTL_S = 120.0
LEASE_RENEW_S = 30.0
#: Written on top of what a case asked for, so that the renewals every LEASE_RENEW_S keep the
#: lease covering a whole next case's budget: that case then sends no lease command
#: (fleet/lease_keeper.py). A dead holder's lease lasts this much longer (one on the same
#: machine is still taken over at once).
LEASE_HEADROOM_S = 2 * LEASE_RENEW_S
#: A renewal that failed (the host rebooting) is tried again this soon.
LEASE_RENEW_RETRY_S = 2.0

# -- restoring a host (cycle/arm_journal.py) -------------------------------------------------
#: Loading the crash kernel again: kexec -p takes ~10 s under TCG, a few s on a server.
KDUMP_RELOAD_TIMEOUT_S = 60.0

# -- the distributed engine (fleet/engine/) --------------------------------------------------
#: Workers write a heartbeat into the queue's database this often (procrastinate's default).
ENGINE_HEARTBEAT_S = 10.0
#: A worker whose last heartbeat is older than this counts as dead and its job is retried by
#: another. Generous (six missed heartbeats): a live worker taken for dead would start its
#: case a second time, and only the host lease would then stop the second copy.
ENGINE_STALLED_AFTER_S = 60.0
#: How often each worker looks for jobs of dead workers in its lab's queue.
ENGINE_STALLED_CHECK_S = 15.0
#: A dead worker's job starts again only after this: the dead worker's host lease must have
#: expired first, or the retried case is refused the host (fleet/lease.py).
ENGINE_RETRY_DELAY_S = LEASE_TTL_S
#: Two workers may both see the same dead job; procrastinate refuses the second retry only
#: while the job is still waiting, so a retry never waits less than this.
ENGINE_MIN_RETRY_DELAY_S = 1.0
#: LISTEN/NOTIFY wakes an idle worker within milliseconds of a submit, but procrastinate
#: notifies only new jobs: a host's next case, held back by the host lock, and a dead
#: worker's job, held back by its retry delay, are found by polling. Measured: with the
#: default 5 s a host's next case started 4.7 s after the previous ended; one cheap query
#: per idle worker per second is nothing to PostgreSQL.
ENGINE_POLL_S = 1.0
#: Connecting to the queue's database: a database that does not answer within this is down.
ENGINE_CONNECT_TIMEOUT_S = 5.0

# -- the run folder (fleet/run_folder.py) ----------------------------------------------------
#: Each case's result.json is written the moment it ends. run.json, junit.xml and report.html
#: are assembled from them at most this often while a run goes on (and always at its end):
#: assembling grows with the run, and a 1,000-host run would spend its controller on it.
REPORT_INTERVAL_S = 5.0
#: ... and no more often than this many times its own last duration: with 1,000 hosts one
#: assembly took 2-3.7 s of a GIL the hosts needed, every 5 s (bench/bench_fleet.py; each
#: then rendered nearly every case again, since fixed: results/html.py's section_ids).
REPORT_SHARE_LIMIT = 10.0
#: Hosts of one local run preparing at once (opened, or a case's steps up to its injection;
#: fleet/preparing.py): more only queue for Python's GIL. A host past its injection waits
#: without a slot. Runs of fewer hosts never meet the limit.
MAX_HOSTS_PREPARING = 128
#: Python's GIL switch interval while a local run drives more hosts than that (the default is
#: 5 ms): every thread waiting for the GIL wakes each interval to ask for it. With 1,000
#: simulated hosts (bench/bench_fleet.py, 3 runs each) the controller spent 8-10 s of a run in
#: the kernel at 5 ms (2.5 million futex calls), 5-5.5 s at 50 ms, and its CPU fell from
#: 0.79-0.88 to 0.64-0.69 cores. A host thread gives the GIL up at once when it waits on its
#: host, so the interval only bounds how long one busy thread (a report being assembled)
#: keeps the others waiting: 50 ms, against a panic noticed within 0.2 s.
FLEET_SWITCH_INTERVAL_S = 0.05
#: How often a case waiting for a host leased by someone else (--lease-wait) looks again.
LEASE_WAIT_POLL_S = 5.0
#: After an infrastructure error, one quick look decides whether the host is still there; a
#: host that does not answer it is lost, and its remaining cases end at once.
HOST_ALIVE_PROBE_S = 10.0
#: The pytest face under pytest-xdist: a test whose host a sibling worker holds waits for it
#: (every default deadline of one case adds up to ~1,100 s), rather than failing.
XDIST_LEASE_WAIT_S = 1800.0
#: How often the main thread wakes while host threads work, so that a Ctrl-C or SIGTERM the
#: kernel delivered to another thread is acted on within this long.
SIGNAL_POLL_S = 0.2
