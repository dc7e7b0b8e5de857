"""The lab BMC acting as the platform's RAS firmware: "report a memory error" (OEM request).

The wire format is transports/ipmi_firmware.py's (netfn 0x30, command 0x01: path, severity,
address); the machine raises the error (vlab/qemu/platform_errors.py).
"""

from __future__ import annotations

import logging

from orchestrator.errors import UnsupportedOperation
from orchestrator.transports.ipmi_firmware import (CC_MALFORMED, CC_NO_SUCH_PATH, CC_POWERED_OFF,
                                                   CMD_REPORT_MEMORY_ERROR, NETFN_OEM, decode)
from orchestrator.vlab.bmc.raw_commands import register

log = logging.getLogger(__name__)


@register(NETFN_OEM, CMD_REPORT_MEMORY_ERROR)
def report_memory_error(bmc, data: bytes) -> tuple[int, bytes]:
    try:
        phys_addr, path, severity = decode(data)
    except ValueError as error:
        log.warning('%s', error)
        return CC_MALFORMED, b''
    if not bmc.powered_on():
        return CC_POWERED_OFF, b''
    try:
        bmc.machine.report_memory_error(phys_addr, path, severity)
    except UnsupportedOperation as error:
        log.info('memory error report refused: %s', error)
        return CC_NO_SUCH_PATH, b''
    log.info('firmware reported a %s %s memory error at %#x', severity, path, phys_addr)
    return 0x00, b''
