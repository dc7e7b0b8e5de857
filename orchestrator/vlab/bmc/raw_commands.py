"""IPMI requests the lab BMC answers beyond pyghmi's own (device id, chassis, SOL).

A table (netfn, command) -> handler, so that each firmware feature (the SEL, the emulated
RAS firmware's error reports) registers its commands in its own module and server.py stays
the power/console BMC. A handler gets the BMC and the request's data bytes and returns
(completion code, response data).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

CC_INVALID_COMMAND = 0xC1
CC_UNSPECIFIED = 0xFF
Handler = Callable[[Any, bytes], "tuple[int, bytes]"]
_HANDLERS: dict[tuple[int, int], Handler] = {}


def register(netfn: int, command: int) -> Callable[[Handler], Handler]:
    def decorate(handler: Handler) -> Handler:
        _HANDLERS[(netfn, command)] = handler
        return handler
    return decorate


def answer(bmc: Any, netfn: int, command: int, data: bytes) -> tuple[int, bytes]:
    """(completion code, data) of a registered handler; 0xC1 when none is registered."""
    handler = _HANDLERS.get((netfn, command))
    if handler is None:
        return CC_INVALID_COMMAND, b""
    try:
        return handler(bmc, data)
    except Exception:
        log.exception('IPMI netfn %#x command %#x failed', netfn, command)
        return CC_UNSPECIFIED, b''


def dispatch(bmc: Any, request: dict, session: Any) -> bool:
    """Answer ``request`` if a handler is registered for it; False lets pyghmi answer."""
    if (request['netfn'], request['command']) not in _HANDLERS:
        return False
    code, data = answer(bmc, request['netfn'], request['command'], bytes(request.get('data') or b''))
    session.send_ipmi_response(code=code, data=list(data))
    return True
