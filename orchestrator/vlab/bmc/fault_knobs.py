"""Fault knobs of a lab BMC, for the fault drills (tests/drills/): switchable while the BMC
runs, by a file in its machine folder, so one lab can run a slow drill and then a normal one.

    bmc.reply_delay    seconds (a float) every packet the BMC sends is held back: a slow
                       BMC. Absent, empty or 0: no delay (the default).

The delay holds packets on timers instead of sleeping in the BMC's loop: a real slow BMC
still takes in the client's retransmits meanwhile, and the loop's SOL servicing must not
stall behind one reply.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyghmi.ipmi.private.session as ipmisession

REPLY_DELAY_FILE = 'bmc.reply_delay'
RECHECK_S = 0.5            # how stale the knob may be: looking at the file on every packet is waste


class ReplyDelay:
    """The current value of ``bmc.reply_delay`` in ``machine_dir``, re-read at most every RECHECK_S."""

    def __init__(self, machine_dir: Path):
        self.path = machine_dir / REPLY_DELAY_FILE
        self._value, self._read_at = 0.0, float('-inf')

    def seconds(self) -> float:
        now = time.monotonic()
        if now - self._read_at >= RECHECK_S:
            self._read_at = now
            try:
                self._value = max(0.0, float(self.path.read_text().strip() or 0))
            except (OSError, ValueError):
                self._value = 0.0
        return self._value


def install_reply_delay(machine_dir: Path) -> ReplyDelay:
    """Route every packet pyghmi sends in this process (one BMC per process) through the knob."""
    knob = ReplyDelay(machine_dir)
    send = getattr(ipmisession._io_sendto, 'undelayed', ipmisession._io_sendto)

    def delayed_sendto(mysocket, packet, sockaddr):
        delay = knob.seconds()
        if delay <= 0:
            return send(mysocket, packet, sockaddr)
        timer = threading.Timer(delay, send, (mysocket, bytes(packet), sockaddr))
        timer.daemon = True
        timer.start()

    delayed_sendto.undelayed = send
    ipmisession._io_sendto = delayed_sendto
    return knob
