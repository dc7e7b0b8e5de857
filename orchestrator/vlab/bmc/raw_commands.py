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


def dispatch(bmc: Any, request: dict, session: Any) -> bool:
    """Answer ``request`` if a handler is registered for it; False lets pyghmi answer."""
    handler = _HANDLERS.get((request['netfn'], request['command']))
    if handler is None:
        return False
    try:
        code, data = handler(bmc, bytes(request.get('data') or b''))
    except Exception:
        log.exception('IPMI netfn %#x command %#x failed', request['netfn'], request['command'])
        code, data = CC_UNSPECIFIED, b''
    session.send_ipmi_response(code=code, data=list(data))
    return True
