"""The telnet framing of QEMU's serial chardev (``telnet=on``): how a serial BREAK gets in.

A telnet chardev turns the two bytes ``IAC BREAK`` (ff f3) from its client into a BREAK on
the emulated UART (16550 or PL011), which Linux takes as the start of a magic-SysRq key, as
real arm64 labs do over a console server or IPMI SOL when there is no NMI
(arm64-ras-lab.md). What it costs, measured on QEMU 7.2 (and 11.1): at every connection
QEMU first sends its option negotiation, ``ff fb 01 ff fb 03 ff fb 00 ff fd 00`` (WILL ECHO,
WILL SGA, WILL BINARY, DO BINARY), and it reads ``ff ff`` from its client as one ff. Guest
output is NOT escaped. So the console stays byte-exact when each connection's leading
negotiation is dropped and typed ff bytes are doubled; nothing else is touched.
"""

from __future__ import annotations

IAC = 0xFF
BREAK = bytes((IAC, 0xF3))
_OPTION_VERBS = range(0xFB, 0xFF)   # WILL, WONT, DO, DONT: followed by one option byte


class TelnetGreeting:
    """Strips the negotiation QEMU sends at the start of one connection; ``telnet`` tells
    whether there was any (a plain socket chardev sends none: then nothing is stripped)."""

    def __init__(self) -> None:
        self.telnet = False
        self._done = False
        self._expect = ""       # "verb" after IAC, "option" after WILL/WONT/DO/DONT (split reads)

    def strip(self, chunk: bytes) -> bytes:
        """The guest's bytes in ``chunk`` (the whole chunk once the greeting is over)."""
        if self._done:
            return chunk
        for i, byte in enumerate(chunk):
            if self._expect == "option":
                self._expect = ""
            elif self._expect == "verb":
                self._expect = "option" if byte in _OPTION_VERBS else ""
            elif byte == IAC:
                self.telnet, self._expect = True, "verb"
            else:
                self._done = True
                return chunk[i:]
        return b""


def escape(data: bytes) -> bytes:
    """Keystrokes for a telnet chardev: a typed ff is sent as ff ff."""
    return data.replace(b"\xff", b"\xff\xff")
