"""In-tree fakes of the capability protocols, for unit tests (labgrid's driver/fake.py).

They hold no kernel knowledge: a test wires them to a scenario (``tests/fakehost.py``)
that decides what a command answers and what the "kernel" prints on the console.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable

from orchestrator.errors import RetryableInfraError
from orchestrator.protocols import shell_batch as batch
from orchestrator.protocols.shell import CommandFailed, CommandResult, ShellProtocol
from orchestrator.protocols.console import ConsoleLine, ConsoleProtocol
from orchestrator.protocols.power import PowerProtocol
from orchestrator.errors import UnsupportedOperation
from orchestrator.transports.console_transcript import ConsoleTranscript


class FakeShell(ShellProtocol):
    """Answers each command with ``handler(command) -> (exit_code, stdout)``; while
    ``reachable()`` is false every call fails the way a dead SSH peer does.
    ``round_trip_s``: real time each call takes, answered or refused, once per call (a batch is
    one round trip, as over SSH), for benchmarks of many simulated hosts."""

    def __init__(self, handler: Callable[[str], tuple[int, str]], *, reachable: Callable[[], bool] = lambda: True,
                 on_detached: Callable[[str], None] | None = None, round_trip_s: float = 0.0):
        self.handler, self.reachable, self.on_detached = handler, reachable, on_detached
        self.round_trip_s = round_trip_s
        self.commands: list[str] = []
        self.batches: list[list[str]] = []      # the commands of each batch, also in ``commands``
        self.closed = 0
        self._in_batch = threading.local()      # a batch's commands ride on its round trip

    def run(self, command: str, *, timeout: float, check: bool = True) -> CommandResult:
        if self.round_trip_s and not getattr(self._in_batch, "open", False):
            time.sleep(self.round_trip_s)
        packed = batch.unpack(command)
        if packed is not None:
            return self._run_batch(command, *packed, timeout=timeout)
        self.commands.append(command)
        if not self.reachable():
            raise RetryableInfraError("fake: connection refused")
        code, out = self.handler(command)
        result = CommandResult(command=command, exit_code=code, stdout=out, stderr="", seconds=0.0)
        if check and code != 0:
            raise CommandFailed(result, "fake")
        return result

    def _run_batch(self, command: str, token: str, sections: list, *, timeout: float) -> CommandResult:
        """One round trip running several commands (protocols/shell_batch.py), answered as
        a host's sh would: each by the handler in turn, until a failed ``stop_on_failure`` one.
        Each is given the batch's timeout: a host cannot hold one command of a script to its own."""
        self.batches.append([s.command for s in sections])
        results = []
        self._in_batch.open = True
        try:
            for section in sections:
                results.append(self.run(section.command, timeout=timeout, check=False))
                if section.stop_on_failure and not results[-1].ok:
                    break
        finally:
            self._in_batch.open = False
        out, err = batch.reply(token, results)
        return CommandResult(command=command, exit_code=0, stdout=out, stderr=err, seconds=0.0)

    def fresh(self) -> "FakeShell":
        return self   # one scripted host: every connection sees the same state

    def fire_detached(self, command: str, *, timeout: float, output: str) -> None:
        self.commands.append(f"detached: {command} > {output}")
        if self.round_trip_s:
            time.sleep(self.round_trip_s)
        if not self.reachable():
            raise RetryableInfraError("fake: connection refused")
        if self.on_detached is not None:
            self.on_detached(command)

    def close(self) -> None:
        self.closed += 1


class FakePower(PowerProtocol):
    def __init__(self, *, on_action: Callable[[str], None] | None = None, nmi_supported: bool = True):
        self.state = "on"
        self.actions: list[str] = []
        self.on_action = on_action or (lambda action: None)
        self.nmi_supported = nmi_supported

    def _act(self, action: str) -> None:
        self.actions.append(action)
        self.on_action(action)

    def status(self) -> str:
        return self.state

    def on(self) -> None:
        self.state = "on"
        self._act("on")

    def off(self) -> None:
        self.state = "off"
        self._act("off")

    def reset(self) -> None:
        self._act("reset")

    def nmi(self) -> None:
        if not self.nmi_supported:
            raise UnsupportedOperation("NMI")
        self._act("nmi")


class FakeConsole(ConsoleProtocol):
    """A transcript fed by the test (``feed``), with the real console's line cleaning and
    condition waits (``ConsoleTranscript``)."""

    def __init__(self, *, break_supported: bool = True, on_break: Callable[[str], None] | None = None) -> None:
        self._transcript = ConsoleTranscript()
        self.alive = True
        self.break_supported = break_supported
        self.on_break = on_break or (lambda then: None)
        self.breaks: list[str] = []       # what was typed after each BREAK

    def feed(self, text: str) -> None:
        self._transcript.feed(text.encode() + b"\n")

    def mark(self) -> int:
        return self._transcript.mark()

    def lines(self, since: int = 0) -> list[ConsoleLine]:
        return self._transcript.lines(since)

    def wait_for(self, pattern: re.Pattern[str], *, since: int, timeout: float) -> ConsoleLine | None:
        return self._transcript.wait_for(pattern, since=since, timeout=timeout if self.alive else 0.0)

    def healthy(self) -> bool:
        return self.alive

    def send_break(self, then: str = "") -> None:
        if not self.break_supported:
            raise UnsupportedOperation("serial BREAK")
        self.breaks.append(then)
        self.on_break(then)

    def close(self) -> None:
        self.alive = False
