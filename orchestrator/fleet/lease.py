"""An exclusive lease on a host, kept ON THE HOST, so that any number of controllers (two
operators, a nightly, pytest-xdist workers, fleet workers at several sites) see the same one.

The lease is a small key=value file in the host's state folder (inventory ``state_dir``, on
a disk that survives the host's own panics and reboots). Every change to it happens in one
SSH command under a lock on the host, so "check, then take" is atomic across controllers
(only a holder giving back a lease far from its expiry, which nobody else may change, skips it).
It names its holder (controller, user, run id, since, expiry, all in the host's clock) and
expires on its own when the holder stops renewing it (a killed controller, a lost network):
the next taker finds it expired and takes it over, saying whose it was.

Nothing here waits: a lease held by someone else is a ``LeaseHeld`` error naming the holder;
whether to wait for it is the caller's choice (fleet/runner.py).
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import FatalInfraError, RetryableInfraError
from orchestrator.protocols.shell import ShellProtocol
from orchestrator.tunables import LEASE_COMMAND_TIMEOUT_S, LEASE_LOCK_STALE_S

#: exit statuses of the lease scripts (sysexits-like, unlikely to collide with sh's own)
HELD, LOST, LOCKED = 73, 74, 75
_UNSAFE = re.compile(r"[^A-Za-z0-9._@:+-]")
FIELDS = ("token", "controller", "user", "run_id", "since", "expires")


class LeaseHeld(FatalInfraError):
    """The host is leased by someone else; ``holder`` says by whom and until when."""

    def __init__(self, host: str, holder: dict[str, str]):
        self.holder = holder
        super().__init__(f"host {host} is leased by {describe(holder)}")


@dataclass(frozen=True)
class Holder:
    """Who takes a lease: written into it for whoever finds it taken."""

    run_id: str
    controller: str = ""
    user: str = ""
    token: str = ""

    @classmethod
    def for_run(cls, run_id: str) -> "Holder":
        return cls(run_id=run_id, controller=f"{socket.gethostname()}:{os.getpid()}",
                   user=_safe_user(), token=secrets.token_hex(8))


def _safe_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):      # no passwd entry (a container): the uid still tells
        return str(os.getuid())


def holder_died_here(holder: dict[str, str]) -> bool:
    """The holder was a process of this machine that no longer exists (a killed controller or
    worker): its lease need not be waited out. A holder elsewhere can only expire."""
    name, _, pid = holder.get("controller", "").rpartition(":")
    if name != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:      # alive, someone else's
        return False
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """Killed, and not yet reaped by its parent: it will never renew its lease again."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def describe(holder: dict[str, str]) -> str:
    return (f"{holder.get('user', '?')} on {holder.get('controller', '?')} (run {holder.get('run_id', '?')}, "
            f"since {holder.get('since', '?')}, expires {holder.get('expires', '?')}, host clock)")


def parse(text: str) -> dict[str, str]:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k: v for k, v in fields.items() if k in FIELDS}


#: Shell helpers every lease script starts with. Builtins only (read, case, echo, printf):
#: on a slow host (a lab guest under emulation) every forked program costs milliseconds, and
#: a lease command runs on the critical path of every case. Left: mkdir, date, mv, rm.
_HELPERS = """\
fields() { tok=''; exp=0; since0=''; lines=''; [ -f "$lease" ] || return 1
  while IFS='=' read -r k v; do lines="$lines$k=$v "
    case $k in token) tok=$v ;; expires) exp=$v ;; since) since0=$v ;; esac; done < "$lease"; }
show() { for kv in $lines; do echo "$kv"; done; }
"""


def _locked(state_dir: str, body: str) -> str:
    """``body`` run under the host-wide lease lock, a directory made with ``mkdir`` (atomic on
    every filesystem and in every shell; busybox guests have no flock). A lock left by a
    command killed mid-way (by its time, or by the lock's own age when the time never reached
    the disk) is older than LEASE_LOCK_STALE_S and is removed; one that stays
    busy past 10 s exits LOCKED."""
    d = shlex.quote(state_dir)
    return (f"{_HELPERS}umask 077; lock={d}/lease.lock; lease={d}/lease; n=0\n"
            f"until mkdir \"$lock\" 2>/dev/null; do\n"
            f"  [ -d {d} ] || mkdir -p {d} || exit 1\n"
            f"  at=''; read -r at < \"$lock/at\" 2>/dev/null; now=$(date +%s)\n"
            # no time written: the holder died between mkdir and echo, or the host lost power
            # before the write reached the disk (seen after `lab down` killed a machine): the
            # lock's own age says how stale it is
            f"  [ -n \"$at\" ] || at=$(stat -c %Y \"$lock\" 2>/dev/null)\n"
            f"  if [ -n \"$at\" ] && [ $((now - at)) -gt {int(LEASE_LOCK_STALE_S)} ]; then rm -rf \"$lock\"; fi\n"
            f"  n=$((n + 1)); [ $n -le 100 ] || exit {LOCKED}; sleep 0.1\n"
            f"done\ntrap 'rm -rf \"$lock\"' EXIT; now=$(date +%s); echo \"$now\" > \"$lock/at\"\n{body}")


def take(shell: ShellProtocol, host: str, state_dir: str, holder: Holder, ttl_s: float, *,
         steal: str = "") -> dict[str, str]:
    """Take (or renew, for the same token) the host's lease for ``ttl_s`` seconds; returns what
    it says now, with ``taken_over`` set when an expired lease of someone else was replaced.
    ``steal``: the token of a holder known to be dead, whose lease is taken over at once
    (only if it is still that holder's: compare and swap, under the lock)."""
    token, stolen = shlex.quote(holder.token), shlex.quote(steal or "-")
    values = {"token": holder.token, "controller": holder.controller, "user": holder.user,
              "run_id": holder.run_id}
    text = "".join(f"{k}={_UNSAFE.sub('_', v)}\\n" for k, v in values.items())
    body = (f"since=$now; over=''\n"
            f"if fields; then\n"
            f"  if [ \"$tok\" = {token} ]; then since=$since0\n"
            f"  elif [ \"${{exp:-0}}\" -gt \"$now\" ] && [ \"$tok\" != {stolen} ]; then show; exit {HELD}\n"
            f"  else over=$lines; fi\n"
            f"fi\n"
            f"printf '{text}since=%s\\nexpires=%s\\n' \"$since\" $((now + {int(ttl_s)})) > \"$lease.tmp\" "
            f"&& {{ sync \"$lease.tmp\" 2>/dev/null; mv \"$lease.tmp\" \"$lease\"; }} || exit 1\n"
            f"printf '{text}since=%s\\nexpires=%s\\n' \"$since\" $((now + {int(ttl_s)}))\n"
            f"[ -z \"$over\" ] || echo \"taken_over=$over\"")
    result = _run(shell, host, _locked(state_dir, body))
    if result.exit_code == HELD:
        raise LeaseHeld(host, parse(result.stdout))
    _check(result, host, "take the lease")
    fields = parse(result.stdout)
    over = [line.split("=", 1)[1] for line in result.stdout.splitlines() if line.startswith("taken_over=")]
    return {**fields, **({"taken_over": describe(parse(over[0].replace(" ", "\n")))} if over else {})}


def release(shell: ShellProtocol, host: str, state_dir: str, holder: Holder, *, locked: bool = True) -> bool:
    """Give the lease back if it is still ours; False if it was not (expired and taken).
    ``locked=False``, for a lease the caller knows has not expired yet: nobody else may change
    it then (a take finds it held, a steal needs its holder dead), so the lock's mkdir, date
    and rm are spared: three of the four programs the release forked, ~40 ms on a lab guest."""
    # A lease without a token is what a crash left of a write (an empty file): nobody's.
    body = (f"fields; [ \"$tok\" = {shlex.quote(holder.token)} ] || [ -z \"$tok\" ] || exit {LOST}\n"
            f"rm -f \"$lease\"")
    script = _locked(state_dir, body) if locked else f"{_HELPERS}lease={shlex.quote(state_dir)}/lease\n{body}"
    result = _run(shell, host, script)
    if result.exit_code == LOST:
        return False
    _check(result, host, "release the lease")
    return True


def read(shell: ShellProtocol, host: str, state_dir: str) -> dict[str, str]:
    """The host's lease as it stands ({} when free), with ``expired`` and ``left_s`` computed
    in the host's own clock."""
    d = shlex.quote(state_dir)
    result = _run(shell, host, f"date +now=%s; cat {d}/lease 2>/dev/null; true")
    _check(result, host, "read the lease")
    fields = parse(result.stdout)
    if not fields:
        return {}
    now = next((int(line[4:]) for line in result.stdout.splitlines() if line.startswith("now=")), 0)
    left = int(fields.get("expires", "0") or 0) - now
    return {**fields, "left_s": str(left), "expired": "yes" if left <= 0 else "no"}


def break_lease(shell: ShellProtocol, host: str, state_dir: str) -> dict[str, str]:
    """An operator's override: remove whatever lease the host has; returns what it said."""
    result = _run(shell, host, _locked(state_dir, "fields && show; rm -f \"$lease\"; true"))
    _check(result, host, "break the lease")
    return parse(result.stdout)


def _run(shell: ShellProtocol, host: str, script: str):
    return shell.run(script, timeout=LEASE_COMMAND_TIMEOUT_S, check=False)


def _check(result, host: str, what: str) -> None:
    if result.exit_code == LOCKED:
        raise RetryableInfraError(f"{host}: could not {what}: another controller holds the lease lock")
    if not result.ok:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit {result.exit_code}"]
        raise FatalInfraError(f"{host}: could not {what}: {detail[0]}")
