"""The BMC acting as the platform firmware behind the lab's EINJ table (qemu/einj_table.py).

einj.ko rings the doorbell (one byte on ``einj.sock``) for each firmware call. On EXECUTE
the firmware reads the request einj.ko left in the parameter block (QMP ``pmemsave``; QEMU
7.2 has no command that reads guest memory into the reply) and raises what a real platform
raises for it: memory uncorrectable non-fatal (0x10) -> an action-optional machine check,
fatal (0x20) -> the same with processor context corrupt, through
``platform_errors.report_memory_error`` so every listener (the SEL) sees it too.

QEMU drops doorbell bytes while nobody is connected and einj.ko still returns 0, so the
reader is connected from the machine's start and follows every new QEMU process (each
guest reboot is one: qemu/cold_reboot.py) the way the serial console reader does.
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

from orchestrator.errors import InfraError, UnsupportedOperation
from orchestrator.vlab.bmc.chardev_client import ChardevClient
from orchestrator.vlab.qemu import einj_table, platform_errors
from orchestrator.vlab.qemu.spec import offers_einj

log = logging.getLogger(__name__)

#: the EINJ error type -> the machine-check severity a platform raises for it (vlab/qemu/mce.py)
SEVERITY = {0x10: "srao", 0x20: "fatal"}
FLAG_MEMORY_ADDRESS = 0x2   # SETWA_FLAGS_MEM: memory_address and its range are valid


@dataclass(frozen=True)
class Request:
    """The parameter block einj.ko wrote (struct set_error_type_with_address)."""
    error_type: int
    vendor_extension: int
    flags: int
    apicid: int
    address: int
    mask: int

    @classmethod
    def decode(cls, data: bytes) -> "Request":
        return cls(*struct.unpack_from("<IIIIQQ", data))

    def refusal(self) -> str | None:
        """Why the firmware raises nothing for this request, or None."""
        if self.error_type not in SEVERITY:
            return f"type {self.error_type:#x} is not offered"
        if not self.flags & FLAG_MEMORY_ADDRESS or not self.address:
            return "no memory address in the request (flags bit 1 clear)"
        return None


class EinjDoorbell(ChardevClient):
    """Keeps ``einj.sock`` of one machine connected and serves each EXECUTE."""

    def __init__(self, machine: Any, raise_error: Callable[..., None] = platform_errors.report_memory_error):
        self.machine, self.spec = machine, machine.spec
        super().__init__(einj_table.doorbell_socket(self.spec.machine_dir), "einj-doorbell")
        self.base = einj_table.register_base(self.spec.memory_mb)
        self._raise_error = raise_error
        #: the last EXECUTEs served: (request, refusal or None, seconds from doorbell to raised)
        self.served: collections.deque = collections.deque(maxlen=100)

    def _serve(self, sock) -> None:
        while not self._stop.is_set():
            try:
                data = sock.recv(64)
            except OSError:
                data = b""
            if not data:
                return
            rung = time.monotonic()
            for byte in data:
                if byte == einj_table.EXECUTE:
                    self.execute(rung)

    def execute(self, rung: float) -> None:
        """One EXECUTE: read the request, raise its machine check; never raises itself (the
        guest gets no answer either way: the status register always says success)."""
        try:
            request = Request.decode(self.read_params())
            refusal = request.refusal()
            if refusal is None:
                self._raise_error(self.machine, self.spec, request.address, "mce", SEVERITY[request.error_type])
        except (InfraError, UnsupportedOperation, OSError, struct.error) as error:
            log.error("EINJ EXECUTE failed: %s", error)
            return
        seconds = time.monotonic() - rung
        self.served.append((request, refusal, seconds))
        if refusal:
            log.warning("EINJ request type %#x at %#x ignored: %s", request.error_type, request.address, refusal)
        else:
            log.info("EINJ type %#x at %#x: %s machine check raised %.1f ms after the doorbell",
                     request.error_type, request.address, SEVERITY[request.error_type], seconds * 1000)

    def read_params(self) -> bytes:
        fd, name = tempfile.mkstemp(prefix="einj-params-", dir=self.spec.machine_dir)
        os.close(fd)
        try:
            self.machine.qmp("pmemsave", val=self.base + einj_table.PARAMS, size=einj_table.PARAMS_SIZE,
                             filename=name)
            with open(name, "rb") as params:
                return params.read()
        finally:
            os.unlink(name)


def for_machine(machine: Any) -> EinjDoorbell | None:
    """The doorbell reader of ``machine``, or None when its platform offers no EINJ."""
    spec = getattr(machine, "spec", None)
    return EinjDoorbell(machine) if spec is not None and offers_einj(spec) else None
