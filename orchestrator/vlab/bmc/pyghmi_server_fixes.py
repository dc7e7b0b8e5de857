"""Fixes for the server (BMC) side of pyghmi 1.6.19, applied by ``install()``.

pyghmi's ``Bmc`` is a toolkit for fake BMCs; its SOL and session code were written for a
client and break in ways a lab BMC meets within minutes (sol-and-ghes.md part A4,
virtual-lab-notes.md section 7). Each patch says which bug it fixes and why: the session
fixes are here, the SOL ones (F1-F4, F7 the serial BREAK) in pyghmi_sol_fixes.py.
``install()`` is idempotent and must run before the first ``Bmc`` is created.

Model the patches assume (and ``QemuBmc`` keeps): ONE thread runs every pyghmi call,
including ``NonBlockingServerConsole.service_retransmits()`` from its main loop.
"""

from __future__ import annotations

import time

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.console as pyghmi_console
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

from orchestrator.vlab.bmc.pyghmi_sol_fixes import (NonBlockingServerConsole, activate_payload,
                                                    answer_payload_queries, deactivate_payload,
                                                    release_sol)

RAKP_HMAC_SHA1 = 1
RMCP_INVALID_AUTH_ALGORITHM = 0x11

_installed = False


def _cipher_suite_fallback(original):
    """Cipher suite: pyghmi's server only implements suite 3 (RAKP-HMAC-SHA1) but answers
    "OK" to a suite 17 (SHA-256) proposal with SHA-1 keys; the pyghmi client then checks a
    20-byte HMAC as SHA-256 (``struct.error: pack expected 32 items``). Answering RMCP+
    status 0x11 (invalid authentication algorithm) makes the client retry with SHA-1."""

    def create_open_session_response(self, request):
        request = bytearray(request)
        auth_algorithm = request[12] & 0x3F if len(request) > 12 else RAKP_HMAC_SHA1
        if auth_algorithm != RAKP_HMAC_SHA1:
            self.clientsessionid = request[4:8]
            return bytearray([request[0], RMCP_INVALID_AUTH_ALGORITHM, 0, 0]) + request[4:8]
        return original(self, request)

    return create_open_session_response


def _stamp_last_heard(original):
    """F3 needs to know when a client was last heard from (any command, keepalive or SOL
    packet); pyghmi keeps no such time for server sessions."""

    def _handle_ipmi_packet(self, data, sockaddr=None, qent=None):
        self.last_heard = time.monotonic()
        return original(self, data, sockaddr=sockaddr, qent=qent)

    return _handle_ipmi_packet


def _close_server_session(self):
    """Close Session (0x3c) is a stub in pyghmi: the SOL stays owned by a gone session and
    the session object stays routed for ever. Release both."""
    bmc = getattr(self, 'bmc', None)
    if bmc is not None and bmc.sol is not None and bmc.sol.ipmi_session is self:
        release_sol(bmc, 'owner closed its session')
    handlers = ipmisession.Session.bmc_handlers.get(self.sockaddr, {})
    if handlers.get(bmc.port if bmc else None) is self:
        del handlers[bmc.port]
        if not handlers:
            ipmisession.Session.bmc_handlers.pop(self.sockaddr, None)


def _sessionless_to_the_bmc(self, data, sockaddr):
    """F6: packets queued to a server session that is closed before the queue is processed
    (a Close Session, or a BMC frozen for a while: on resume its clients' retries and the
    session's close arrive together) take Session.process_pktqueue's "sessionless" branch,
    which calls a method ServerSession lacks: the AttributeError killed the lab BMC, and its
    machine with it. Sessionless data is the BMC's to answer (it is how a login starts)."""
    self.bmc.sessionless_data(data, sockaddr)


def install() -> None:
    """Apply every fix once (idempotent: later calls do nothing)."""
    global _installed
    if _installed:
        return
    server_session = serversession.ServerSession
    # F5 and friends: attributes Session.__init__ would have set, read by shared client
    # code paths (SOL ack handling, keepalive bookkeeping) -> AttributeError without them.
    server_session._customkeepalives = None
    server_session.sol_handler = None
    server_session.last_payload_type = None
    server_session.last_heard = 0.0
    server_session.create_open_session_response = _cipher_suite_fallback(
        server_session.create_open_session_response)
    server_session._handle_ipmi_packet = _stamp_last_heard(
        ipmisession.Session._handle_ipmi_packet)
    server_session.close_server_session = _close_server_session
    server_session.sessionless_data = _sessionless_to_the_bmc
    bmc_class = pyghmi_bmc.Bmc
    bmc_class.activate_payload = activate_payload
    bmc_class.deactivate_payload = deactivate_payload
    bmc_class.handle_raw_request = answer_payload_queries(bmc_class.handle_raw_request)
    # Anyone constructing pyghmi's ServerConsole gets the non-blocking one (F1, F4).
    pyghmi_console.ServerConsole = NonBlockingServerConsole
    _installed = True
