"""The platform firmware's error reports, requested through the BMC (``FirmwareErrorProtocol``).

The request is an OEM IPMI command whose format the lab BMC defines
(vlab/bmc/firmware_requests.py: netfn 0x30, command 0x01; path, severity, address). A rack
whose BMC offers its own injection command gets its own module beside this one.
"""

from __future__ import annotations

from orchestrator.errors import FatalInfraError, UnsupportedOperation
from orchestrator.protocols.firmware import SEVERITIES, FirmwareErrorProtocol, check_report
from orchestrator.transports.ipmi import IpmiPower

NETFN_OEM = 0x30
CMD_REPORT_MEMORY_ERROR = 0x01
PATH_CODES = {"mce": 1, "ghes": 2}
CC_NO_SUCH_PATH, CC_MALFORMED, CC_POWERED_OFF = 0xC1, 0xCC, 0xD5
#: completion codes the lab BMC answers with, in an operator's words
_REFUSALS = {CC_NO_SUCH_PATH: "the BMC's firmware has no such error path on this machine",
             CC_MALFORMED: "the BMC found the request malformed",
             CC_POWERED_OFF: "the machine is powered off"}


def encode(phys_addr: int, path: str, severity: str) -> bytes:
    return bytes([PATH_CODES[path], SEVERITIES[path].index(severity)]) + phys_addr.to_bytes(8, "little")


def decode(data: bytes) -> tuple[int, str, str]:
    """(phys_addr, path, severity) of an encoded request; ValueError when malformed."""
    paths = {code: name for name, code in PATH_CODES.items()}
    if len(data) != 10 or data[0] not in paths or data[1] >= len(SEVERITIES[paths[data[0]]]):
        raise ValueError(f"bad memory-error request {data.hex()}")
    path = paths[data[0]]
    return int.from_bytes(data[2:], "little"), path, SEVERITIES[path][data[1]]


class IpmiFirmware(FirmwareErrorProtocol):
    def __init__(self, power: IpmiPower):
        self._power = power      # shares the host's BMC session and its serialization

    def report_memory_error(self, phys_addr: int, *, path: str, severity: str) -> None:
        check_report(path, severity)
        action = f"report {severity} {path} memory error at {phys_addr:#x}"
        code, _ = self._power.raw(action, NETFN_OEM, CMD_REPORT_MEMORY_ERROR, encode(phys_addr, path, severity))
        if code == 0xC1:
            raise UnsupportedOperation(f"{action}: {_REFUSALS[code]}")
        if code:
            raise FatalInfraError(f"{action}: {_REFUSALS.get(code, f'completion code {code:#x}')}")
