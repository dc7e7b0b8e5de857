"""pyghmi 1.6.19's server-side SOL, fixed: the console that sends without running the
event loop, and the payload commands (activate, deactivate, instance info, activation
status) that a lab BMC's clients need. Installed by ``pyghmi_server_fixes.install()``;
the F-numbers are the fixes listed there (sol-and-ghes.md part A4).
"""

from __future__ import annotations

import struct
import time

import pyghmi.ipmi.console as pyghmi_console

SOL_PACKET_MAX = 255          # the SOL "accepted character count" is one byte (F1)
SOL_RETRANSMIT_SECONDS = 1.0  # the spec's SOL retry interval; clients ack within ms
SOL_RETRANSMIT_LIMIT = 5
GENERATE_BREAK = 0b10000      # client-to-BMC operation bit 4 (ipmitool ~B, pyghmi send_break)
DEFAULT_SOL_IDLE_TIMEOUT = 65.0  # > 2 pyghmi keepalive periods (24-29 s) and ipmitool's 30 s


class NonBlockingServerConsole(pyghmi_console.ServerConsole):
    """F1 + F4 (+ F7, the serial BREAK): a ServerConsole that never runs the event loop inside itself.

    pyghmi's ``Console._sendoutput`` sends one chunk, then spins ``wait_for_rsp`` until the
    ack arrives; the ack handler sends the next chunk from inside that wait, one stack level
    per chunk -> RecursionError under a console flood, and with a second thread pumping, two
    loops run at once and keystrokes get reordered. Here ``_sendoutput`` only sends;
    the BMC main loop calls ``service_retransmits`` to resend an unacked packet."""

    def __init__(self, session, iohandler, force=False):
        # Same fields as ServerConsole.__init__, minus its wait_for_rsp(0): that would run
        # the event loop re-entrantly inside the Activate Payload handler (F4).
        self.outputlock = pyghmi_console.threading.RLock()
        self.keepaliveid = None
        self.connected = True
        self.broken = False
        self.out_handler = iohandler
        self.remseq = self.myseq = self.lastsize = self.retriedpayload = 0
        self.pendingoutput = []
        self.awaitingack = False
        self.activated = True
        self.force_session = force
        self.ipmi_session = session
        session.sol_handler = self._got_sol_payload
        # F1: 256 overflows the one-byte accepted-count field; the pyghmi client then dies
        # with "ValueError: byte must be in range(0, 256)" in its ack builder.
        self.maxoutcount = SOL_PACKET_MAX
        self.poweredon = True
        self._sent_at = 0.0
        self._retransmits = 0

    def _sendoutput(self, output, sendbreak=False):
        """Send one SOL data packet and return at once (F4); the ack arrives through
        ``_got_sol_payload`` in the same thread, which sends the next pending chunk."""
        self.myseq = (self.myseq + 1) & 0xF or 1
        payload = bytearray((self.myseq, 0, 0, 0b10000 if sendbreak else 0)) + bytes(output)
        self.lasttextsize = len(output)
        self.awaitingack = True
        self.lastpayload = payload
        self._sent_at = time.monotonic()
        self._retransmits = 0
        self.send_payload(payload)

    def _got_sol_payload(self, payload):
        """F7: pyghmi acks a client's "generate BREAK" and drops it. Hand it to the iohandler
        as ``{'break': True}`` before the ack (the key the client types next must come after
        it), once per packet: a retransmit repeats the sequence number."""
        if not isinstance(payload, dict) and len(payload) >= 4 and payload[3] & GENERATE_BREAK:
            seq = payload[0] & 0xF
            if seq and seq != self.remseq:
                self.out_handler({'break': True})
        super()._got_sol_payload(payload)

    def send_payload(self, payload, payload_type=1, retry=True, needskeepalive=False):
        # retry=False always: ServerSession._timedout is a stub, so pyghmi's generic retry
        # never fires; worse, it parks the session's lastpayload and queues every later
        # packet (acks included) in pendingpayloads until the client happens to ack.
        if self.ipmi_session is None:
            return
        self.ipmi_session.send_payload(payload, payload_type=payload_type, retry=False,
                                       needskeepalive=needskeepalive)

    def service_retransmits(self, now: float | None = None) -> None:
        """Resend the unacked packet every second; after 5 tries report 'Connection lost'
        (to the iohandler, which releases the SOL so another client can take it: F3)."""
        if not self.awaitingack or self.broken or self.ipmi_session is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._sent_at < SOL_RETRANSMIT_SECONDS:
            return
        if self._retransmits >= SOL_RETRANSMIT_LIMIT:
            self.awaitingack = False
            self._print_error('Connection lost')
            return
        self._retransmits += 1
        self._sent_at = now
        self.send_payload(self.lastpayload)


def release_sol(bmc, why: str) -> None:
    """Drop the active SOL payload so a later client can activate it."""
    if bmc.sol is not None:
        bmc.sol.activated = False
        bmc.sol.awaitingack = False
    bmc.sol = None
    bmc.activated = False
    log = getattr(bmc, 'log_event', None)
    if log:
        log(f'SOL released: {why}')


def _sol_owner_is_stale(bmc, requester) -> str | None:
    """F3: why the current SOL owner may be replaced by ``requester`` (None: it may not)."""
    sol = bmc.sol
    owner = sol.ipmi_session if sol is not None else None
    if owner is None or sol.broken or not sol.activated:
        return 'owner console is broken'
    if owner is requester:
        return None
    if owner.sockaddr == requester.sockaddr:
        return 'same client address activated again'
    idle_limit = getattr(bmc, 'sol_idle_timeout', DEFAULT_SOL_IDLE_TIMEOUT)
    silent = time.monotonic() - getattr(owner, 'last_heard', 0.0)
    if silent > idle_limit:
        return f'owner silent for {silent:.0f} s'
    return None


def activate_payload(self, request, session):
    """F3: a client that vanished without Deactivate Payload (crash, kill, a Console never
    closed) kept ``activated`` for ever, refusing every later client (ipmitool: "SOL
    payload already active on another session"). Take over a broken, re-activating or
    silent owner; otherwise answer 0x80 as before. Errors from the console ('Connection
    lost') release the SOL too. The console is the non-blocking one (F1, F4)."""
    if self.iohandler is None or not self.is_active():
        return session.send_ipmi_response(code=0x81)
    if self.activated:
        why = _sol_owner_is_stale(self, session)
        if why is None:
            return session.send_ipmi_response(code=0x80)
        release_sol(self, why)
    self.activated = True
    solport = list(struct.pack('!H', self.port))
    session.send_ipmi_response(data=[0, 0, 0, 0, 1, 0, 1, 0] + solport + [0xFF, 0xFF])
    # F5: ServerSession never runs Session.__init__, so this attribute (read by
    # Console._print_error -> unregister_keepalive on the first failed retransmit) is missing.
    session._customkeepalives = None
    bmc_iohandler = self.iohandler

    def iohandler(data):
        if isinstance(data, dict) and 'error' in data and self.sol is console:
            release_sol(self, f"console error {data['error']!r}")
        bmc_iohandler(data)

    console = NonBlockingServerConsole(session, iohandler)
    self.sol = console


def deactivate_payload(self, request, session):
    """Deactivate from any session (ipmitool ``sol deactivate``, pyghmi ``force=True``)."""
    if self.iohandler is None:
        return session.send_ipmi_response(code=0x81)
    if not self.activated:
        return session.send_ipmi_response(code=0x80)
    session.send_ipmi_response()
    release_sol(self, 'deactivate requested')


def _payload_instance_info(bmc, session) -> None:
    """F2: Get Payload Instance Info (netfn 6, 0x4b) is the pyghmi client's SOL keepalive
    (every 24-29 s); pyghmi's Bmc answered 0xc1 and the client dropped its console after
    ~25 s. Answer the owner's session id (the client compares it with its own) + 8 zeros."""
    owner = bmc.sol.ipmi_session if bmc.activated and bmc.sol else None
    owner_id = list(owner.managedsessionid) if owner is not None else [0, 0, 0, 0]
    session.send_ipmi_response(data=owner_id + [0] * 8)


def _payload_activation_status(bmc, session) -> None:
    """F2 (companion): Get Payload Activation Status (0x4a): one SOL instance, bit 0 set
    while active. ipmitool ``sol info``/``sol activate`` style clients ask for it."""
    session.send_ipmi_response(data=[1, 1 if bmc.activated else 0, 0])


def answer_payload_queries(original):
    def handle_raw_request(self, request, session):
        if request['netfn'] == 6 and request['command'] == 0x4B:
            return _payload_instance_info(self, session)
        if request['netfn'] == 6 and request['command'] == 0x4A:
            return _payload_activation_status(self, session)
        return original(self, request, session)

    return handle_raw_request
