"""Waiting on a host: SSH back, a new boot, kdump armed, each against a deadline.

Liveness is always a real SSH command, never a TCP connect: QEMU's user network (and some
BMC-side NAT) accepts TCP for a dead guest.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar


from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from orchestrator.errors import DeadlineExceeded, RetryableInfraError
from orchestrator.cycle.probe_pace import SHARED, ProbePace
from orchestrator.cycle.waitmeter import pause
from orchestrator.protocols.shell import ShellProtocol
from orchestrator.tunables import (HEDGE_FAST_S, MAX_PROBES_IN_FLIGHT, PREFLIGHT_RETRY_PAUSE_S,
                                   PROBE_TIMEOUT_S, SSH_POLL_S, SSH_POLL_SLOW_S)


T = TypeVar("T")

BOOT_FACTS_CMD = (
    "cat /proc/sys/kernel/random/boot_id; uname -r; "
    "cat /sys/kernel/kexec_crash_loaded 2>/dev/null || echo -; date +%s"
)


@dataclass(frozen=True)
class BootFacts:
    boot_id: str
    kernel_release: str
    kdump_loaded: bool | None       # None: the kernel has no kexec_crash_loaded file
    epoch: int                      # host clock, seconds
    seen_at: float                  # controller monotonic time of the answer


def read_boot_facts(shell: ShellProtocol, timeout: float = 15.0) -> BootFacts:
    out = shell.run(BOOT_FACTS_CMD, timeout=timeout).stdout.split()
    if len(out) < 4:
        raise RetryableInfraError(f"unexpected answer to the boot facts probe: {out!r}")
    loaded = None if out[2] == "-" else out[2] == "1"
    return BootFacts(boot_id=out[0], kernel_release=out[1], kdump_loaded=loaded, epoch=int(out[3]),
                     seen_at=time.monotonic())


def wait_for_boot(shell: ShellProtocol, *, deadline_s: float, state: str,
                  not_boot_id: str | None = None, kdump_loaded: bool = False,
                  sleep: Callable[..., None] = pause, keep_for: ShellProtocol | None = None,
                  pace: ProbePace = SHARED) -> BootFacts:
    """Poll until the host answers SSH (with a boot_id different from ``not_boot_id`` and, if
    asked, the crash kernel loaded). Raises ``DeadlineExceeded`` naming ``state``.

    Probes are hedged: a new one starts on a fresh connection every ``SSH_POLL_S`` without
    waiting for earlier ones, because an attempt made just before the host's network came
    up stalls until its banner timeout (slirp and NAT accept TCP for a dead guest and retry
    it seconds later), and waiting that out put "reboot noticed" 1.4 s after sshd started.
    ``sleep(seconds, until)`` paces the polling, so the caller's meter counts it as waiting on
    the host; it returns early when a probe finishes (no ticking: with probes stalled on their
    banners, looking every 20 ms woke 1,000 waiting hosts 50,000 times a second).
    ``keep_for``: the shell that takes over the answering probe's connection (the first
    command after a reboot waited 0.25-0.4 s for a handshake of its own on a lab guest).
    ``pace``: the probe budget shared with every other host's wait (cycle/probe_pace.py)."""
    if not_boot_id is not None:
        shell.close()   # a connection from the old boot would hang until its timeout
    began = next_start = time.monotonic()
    end, why = began + deadline_s, "no answer yet"
    pending: dict[Future, ShellProtocol] = {}
    finished_one = threading.Event()
    pool = ThreadPoolExecutor(max_workers=MAX_PROBES_IN_FLIGHT, thread_name_prefix=f"boot-probe {state}")
    try:
        while (now := time.monotonic()) < end:
            if now >= next_start and len(pending) < MAX_PROBES_IN_FLIGHT:
                fresh = shell.fresh()
                probe = pool.submit(_probe, fresh, end - now, not_boot_id, kdump_loaded)
                probe.add_done_callback(lambda _: finished_one.set())
                pending[probe] = fresh
                next_start = pace.reserve(now + _probe_period(now - began, new_boot=not_boot_id is not None))
            finished_one.clear()        # before looking: a probe ending after the look wakes the pause
            for finished in [f for f in pending if f.done()]:
                del pending[finished]
                try:
                    facts, attempt = finished.result()
                except RetryableInfraError as exc:   # anything else (a wrong host key) is final
                    why = str(exc) or why
                    continue
                if keep_for is not None:
                    keep_for.adopt(attempt)
                else:
                    attempt.close()
                return facts
            due = next_start if len(pending) < MAX_PROBES_IN_FLIGHT else end
            sleep(max(0.0, min(due, end) - time.monotonic()), finished_one)
    finally:
        _abandon(pool, pending)
    raise DeadlineExceeded(state, deadline_s, why)


def _abandon(pool: ThreadPoolExecutor, pending: dict[Future, ShellProtocol]) -> None:
    """Probes still in flight are closed now, not left to end by their own timeouts: on the
    lab, probes stalled on a banner all got one the moment sshd listened, and their
    handshakes slowed the rebooted guest's first commands (the dump's collection took
    0.52-0.89 s with them, 0.49-0.77 s closed; bench/bench_orchestrator.py, 6 cases each)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for future, attempt in pending.items():
        future.add_done_callback(_close_if_answered)
        attempt.close()


def _probe_period(waited_s: float, *, new_boot: bool) -> float:
    """Fast only at first, and never while waiting for a new boot: no host is through a
    reboot in HEDGE_FAST_S (a lab guest's panic -> SSH takes 9-12 s, its boot alone 5-8 s),
    so fast probes then find nothing: 30 of them per host, for 1,000 just-panicked simulated
    hosts while others still prepared their injections (bench/bench_fleet.py)."""
    return SSH_POLL_S if waited_s < HEDGE_FAST_S and not new_boot else SSH_POLL_SLOW_S


def _probe(attempt_shell: ShellProtocol, left: float, not_boot_id: str | None,
           kdump_loaded: bool) -> tuple[BootFacts, ShellProtocol]:
    """One look on a connection of its own, kept open if the host answers as wanted."""
    try:
        facts = read_boot_facts(attempt_shell, timeout=max(0.5, min(PROBE_TIMEOUT_S, left)))
        if not_boot_id is not None and facts.boot_id == not_boot_id:
            raise RetryableInfraError("still the same boot")
        if kdump_loaded and not facts.kdump_loaded:
            raise RetryableInfraError("up, but the crash kernel is not loaded yet")
    except BaseException:
        attempt_shell.close()
        raise
    return facts, attempt_shell


def _close_if_answered(probe: Future) -> None:
    if not probe.cancelled() and probe.exception() is None:
        probe.result()[1].close()


def retry_transient(call: Callable, *args):
    """A freshly rebooted host may drop the first connection or two: retry those only."""
    for attempt in Retrying(stop=stop_after_attempt(3), wait=wait_fixed(1.0),
                            retry=retry_if_exception_type(RetryableInfraError), reraise=True):
        with attempt:
            return call(*args)


def retry_until(deadline_s: float, attempt: Callable[[float], T], *, sleep: Callable[[float], None] = time.sleep,
                on_retry: Callable[[Exception], None] = lambda exc: None) -> T:
    """``attempt(seconds_left)`` again after each ``RetryableInfraError`` until ``deadline_s``
    is spent; for steps that change nothing on the host. The connections hedged probes leave
    behind are why: a host's sshd refuses new ones for a moment (dropbear: 5 unauthenticated
    per address), and the first command after a wait met "Error reading SSH protocol banner"."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return attempt(max(1.0, end - time.monotonic()))
        except RetryableInfraError as exc:
            if end - time.monotonic() <= PREFLIGHT_RETRY_PAUSE_S:
                raise
            on_retry(exc)
            sleep(PREFLIGHT_RETRY_PAUSE_S)
