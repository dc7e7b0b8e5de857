"""In-tree fakes of the capability protocols, for unit tests (labgrid's driver/fake.py).

They hold no kernel knowledge: a test wires them to a scenario (``tests/fakehost.py``)
that decides what a command answers and what the "kernel" prints on the console.
"""

from __future__ import annotations

import re
from typing import Callable

from orchestrator.errors import RetryableInfraError
from orchestrator.protocols.shell import CommandFailed, CommandResult, ShellProtocol
from orchestrator.protocols.console import ConsoleLine, ConsoleProtocol
from orchestrator.protocols.power import PowerProtocol
from orchestrator.errors import UnsupportedOperation
from orchestrator.transports.console_transcript import ConsoleTranscript


class FakeShell(ShellProtocol):
    """Answers each command with ``handler(command) -> (exit_code, stdout)``; while
    ``reachable()`` is false every call fails the way a dead SSH peer does."""

    def __init__(self, handler: Callable[[str], tuple[int, str]], *, reachable: Callable[[], bool] = lambda: True,
                 on_detached: Callable[[str], None] | None = None):
        self.handler, self.reachable, self.on_detached = handler, reachable, on_detached
        self.commands: list[str] = []
        self.closed = 0

    def run(self, command: str, *, timeout: float, check: bool = True) -> CommandResult:
        self.commands.append(command)
        if not self.reachable():
            raise RetryableInfraError("fake: connection refused")
        code, out = self.handler(command)
        result = CommandResult(command=command, exit_code=code, stdout=out, stderr="", seconds=0.0)
        if check and code != 0:
            raise CommandFailed(result, "fake")
        return result

    def fresh(self) -> "FakeShell":
        return self   # one scripted host: every connection sees the same state

    def fire_detached(self, command: str, *, timeout: float, output: str) -> None:
        self.commands.append(f"detached: {command} > {output}")
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
