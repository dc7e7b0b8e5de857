"""A shell that answers commands from a batch run ahead of them (protocols/shell_batch.py).

A step that knows which commands it (and the kernel/ helpers it calls) will run next asks
for them in one round trip with ``prefetch``; each of those commands, when run next, gets
its own result from that batch: same exit status, output and error message as if it had
run alone, so errors still say which command failed and why.

Prefetched results describe the host at the moment of the batch, so they are kept only
while nothing else happens on the host through this shell: any command not answered from
the batch, a detached command, a new batch or a closed connection (the host may reboot)
drops every result not yet used. A batch whose connection drops leaves that error for its
commands: the first one run raises it, as its own round trip would have.
"""

from __future__ import annotations

import threading
from collections import Counter, deque

from orchestrator.errors import InfraError
from orchestrator.protocols import shell_batch as batch
from orchestrator.protocols.shell import CommandFailed, CommandResult, ShellProtocol


class PrefetchShell(ShellProtocol):
    def __init__(self, inner: ShellProtocol):
        self._inner = inner
        self._lock = threading.Lock()
        self._ready: dict[str, deque] = {}
        self.batches = 0                     # round trips that answered more than one command

    def prefetch(self, sections: list[batch.Section], *, timeout: float | None = None) -> None:
        """Run ``sections`` in one round trip (within ``timeout`` seconds, if given); fewer
        than two are left to run on their own. Whatever an earlier batch answered is dropped,
        unless it already holds an answer for each of ``sections`` (an earlier step sent them
        ahead with its own: cycle/ahead.py), which are then not asked for again."""
        if self._holds(sections):
            return
        self._drop()
        if len(sections) < 2:
            return
        try:
            results = batch.run_batch(self._inner, sections, timeout)
        except InfraError as exc:
            self._keep([(s.command, exc) for s in sections])
            return
        if results is not None:
            self.batches += 1
            self._keep([(r.command, r) for r in results])

    def run(self, command: str, *, timeout: float, check: bool = True) -> CommandResult:
        with self._lock:
            queued = self._ready.get(command)
            ready = queued.popleft() if queued else None
            if ready is None:
                self._ready.clear()
        if ready is None:
            return self._inner.run(command, timeout=timeout, check=check)
        if isinstance(ready, Exception):
            self._drop()
            raise ready
        if check and not ready.ok:
            raise CommandFailed(ready, self._where())
        return ready

    def fire_detached(self, command: str, *, timeout: float, output: str) -> None:
        self._drop()
        self._inner.fire_detached(command, timeout=timeout, output=output)

    def fresh(self) -> ShellProtocol:
        return self._inner.fresh()

    def adopt(self, other: ShellProtocol) -> None:
        self._drop()
        self._inner.adopt(other)

    def close(self) -> None:
        self._drop()
        self._inner.close()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def _where(self) -> str:
        where = getattr(self._inner, "_where", None)
        return where() if callable(where) else "host"

    def _keep(self, pairs) -> None:
        with self._lock:
            for command, answer in pairs:
                self._ready.setdefault(command, deque()).append(answer)

    def _holds(self, sections: list[batch.Section]) -> bool:
        wanted = Counter(section.command for section in sections)
        with self._lock:
            return bool(sections) and all(len(self._ready.get(c, ())) >= n for c, n in wanted.items())

    def _drop(self) -> None:
        with self._lock:
            self._ready.clear()
