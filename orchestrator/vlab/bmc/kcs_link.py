"""The guest's in-band IPMI interface: QEMU's ``ipmi-bmc-extern`` behind ``isa-ipmi-kcs``,
connected to ``ipmi.sock`` in the machine dir, which this BMC process serves.

The guest kernel's ipmi_si driver talks KCS to QEMU; QEMU forwards each request on the
socket in OpenIPMI's "VM" framing (sel-in-band.md): 0xA0 ends a message, 0xA1 a control
command, 0xAA escapes the next byte (sent with bit 4 set). A message is ``seq, netfn<<2|lun,
cmd, data..., checksum`` (two's complement of the sum of all earlier bytes); the reply is
``seq, (netfn+1)<<2|lun, cmd, completion code, data..., checksum``.

The BMC listens and QEMU connects (``reconnect=1``): every cold reboot starts a new QEMU
that connects again, while the SEL stays here. Requests are answered by the handlers in
raw_commands (the SEL's) plus Get Device ID; anything else gets 0xC1, which the kernel's
probe tolerates.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from orchestrator.vlab.bmc import raw_commands
from orchestrator.vlab.qemu.spec import IPMI_SOCKET as SOCKET_NAME   # where QEMU connects

log = logging.getLogger(__name__)

MSG_END, CONTROL_END, ESCAPE = 0xA0, 0xA1, 0xAA
NETFN_APP, CMD_GET_DEVICE_ID = 0x06, 0x01
SEL_DEVICE = 0x04               # "additional device support": without it the kernel sends no panic text
_SPECIAL = (MSG_END, CONTROL_END, ESCAPE)
#: the system interface's housekeeping the kernel's probe asks for (answered without 0xC1
#: warnings): Set/Get BMC Global Enables (SEL logging on), Clear/Get Message Flags (none)
_SYSTEM_INTERFACE = {(NETFN_APP, 0x2E): b"", (NETFN_APP, 0x2F): b"\x08", (NETFN_APP, 0x30): b"",
                     (NETFN_APP, 0x31): b"\x00"}


def checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def frame(message: bytes) -> bytes:
    out = bytearray()
    for byte in message + bytes([checksum(message)]):
        out += bytes([ESCAPE, byte | 0x10]) if byte in _SPECIAL else bytes([byte])
    return bytes(out + bytes([MSG_END]))


def device_id(bmc: Any) -> bytes:
    """Get Device ID as the kernel's probe wants it: IPMI 2.0, a SEL device."""
    return bytes([bmc.deviceid, bmc.revision & 0x0F, bmc.firmwaremajor & 0x7F, bmc.firmwareminor, 0x02,
                  bmc.additionaldevices | SEL_DEVICE]) + struct.pack("<I", bmc.mfgid)[:3] \
        + struct.pack("<H", bmc.prodid & 0xFFFF)


def answer(bmc: Any, message: bytes) -> bytes | None:
    """The framed reply to one unescaped message (checksum included); None if it is corrupt."""
    if len(message) < 4 or checksum(message[:-1]) != message[-1]:
        log.warning("KCS: dropped a corrupt message %s", message.hex())
        return None
    seq, netfn_lun, command, data = message[0], message[1], message[2], message[3:-1]
    netfn, lun = netfn_lun >> 2, netfn_lun & 0x03
    if (netfn, command) == (NETFN_APP, CMD_GET_DEVICE_ID):
        code, reply = 0x00, device_id(bmc)
    elif (netfn, command) in _SYSTEM_INTERFACE:
        code, reply = 0x00, _SYSTEM_INTERFACE[(netfn, command)]
    else:
        code, reply = raw_commands.answer(bmc, netfn, command, data)
    return frame(bytes([seq, (netfn + 1) << 2 | lun, command, code]) + reply)


class Deframer:
    """Bytes from the socket -> whole unescaped messages (control commands are dropped)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._escaped = False

    def feed(self, data: bytes) -> list[bytes]:
        messages = []
        for byte in data:
            if self._escaped:
                self._buffer.append(byte & ~0x10)
                self._escaped = False
            elif byte == ESCAPE:
                self._escaped = True
            elif byte in (MSG_END, CONTROL_END):
                if byte == MSG_END:
                    messages.append(bytes(self._buffer))
                self._buffer.clear()
            else:
                self._buffer.append(byte)
        return messages


class KcsLink:
    """Serve ``ipmi.sock`` for the guest's KCS interface, one QEMU connection at a time."""

    def __init__(self, bmc: Any, machine_dir: Path):
        self.bmc = bmc
        self.path = machine_dir / SOCKET_NAME
        self.path.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(2)
        self._thread = threading.Thread(target=self._serve, name="kcs-link", daemon=True)

    @classmethod
    def attach(cls, bmc: Any, machine_dir: Path) -> "KcsLink":
        """Make ``bmc`` a SEL device and give it its guest link. LAN clients see the SEL bit
        in Get Device ID; "device SDRs, no SDR repository" makes pyghmi's get_event_log skip
        reading SDRs this BMC has not got."""
        bmc.revision |= 0x80
        bmc.additionaldevices |= SEL_DEVICE
        return cls(bmc, machine_dir)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.close()        # the accept loop ends; a live connection ends with its QEMU
        self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), name="kcs-conn", daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        log.info("KCS: QEMU connected")
        deframer = Deframer()
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    break
                if not data:
                    break
                for message in deframer.feed(data):
                    reply = answer(self.bmc, message)
                    if reply is not None:
                        conn.sendall(reply)
        log.info("KCS: QEMU disconnected")
