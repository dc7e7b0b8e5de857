"""Several host commands in one SSH round trip, each keeping its own exit status, stdout and
stderr, so that whoever reads a command's result says what failed exactly as if it had run
alone.

Why: on a lab guest under TCG one SSH command costs 60-90 ms of round trip, and a case ran
~17 of them before its injection (issue 8's per-case cost targets). The steps of the cycle
still call the kernel/ helpers one command at a time; a step that knows which commands come
next sends them here first (cycle/prefetch.py), and the helpers are answered from the batch.

Each command runs in a subshell of its own (an ``exit`` in it ends only it), in order. A
section marked ``stop_on_failure`` stops the batch when it fails: the commands after it
were conditional on it (no sysctl is written when the arm journal could not be).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from orchestrator.protocols.shell import CommandResult, ShellProtocol


@dataclass(frozen=True)
class Section:
    command: str
    timeout: float = 30.0               # what the command alone would have been given
    stop_on_failure: bool = False       # the sections after it run only if it succeeded


def new_token() -> str:
    """A marker no command's output contains by chance."""
    return f"@@memfail-batch-{secrets.token_hex(6)}"


def script(sections: list[Section], token: str) -> str:
    """The sh script running ``sections`` in order, marking where each one's output ends."""
    parts = [f"# {token}: {len(sections)} commands in one round trip (protocols/shell_batch.py)"]
    for i, section in enumerate(sections):
        parts.append(f": {token} {i} {'stop' if section.stop_on_failure else 'go'}\n(\n{section.command.rstrip()}\n)\n"
                     f"r=$?; printf '\\n{token} {i} %d\\n' $r; printf '\\n{token} {i}\\n' >&2")
        if section.stop_on_failure:
            parts.append("[ $r -eq 0 ] || exit 0")
    return "\n".join(parts) + "\n"


_SECTION = re.compile(r"^: (@@memfail-batch-[0-9a-f]+) \d+ (stop|go)\n\(\n", re.M)


def unpack(text: str) -> tuple[str, list[Section]] | None:
    """(token, sections) of a ``script``; None for any other command. For fake shells, which
    answer each command of a batch the way a host's sh would run it."""
    head = re.match(r"# (@@memfail-batch-[0-9a-f]+): \d+ commands", text)
    if head is None:
        return None
    token = head[1]
    chunks = _SECTION.split(text)[1:]           # one pattern for every token: compiled once
    return token, [Section(body[:body.rindex("\n)\nr=$?")], stop_on_failure=kind == "stop")
                   for marker, kind, body in zip(chunks[0::3], chunks[1::3], chunks[2::3]) if marker == token]


def reply(token: str, results: list[CommandResult]) -> tuple[str, str]:
    """(stdout, stderr) of a batch whose commands gave ``results`` (for fake shells)."""
    out = "".join(f"{r.stdout}\n{token} {i} {r.exit_code}\n" for i, r in enumerate(results))
    return out, "".join(f"{r.stderr}\n{token} {i}\n" for i, r in enumerate(results))


def split(answer: CommandResult, sections: list[Section], token: str) -> list[CommandResult] | None:
    """Each section's own result, in order, as far as the batch got (a stopped batch has
    fewer); None when the answer carries no marker at all (the script did not run)."""
    outs, codes = _marked(answer.stdout, token)
    errs, _ = _marked(answer.stderr, token)
    if not codes:
        return None
    results = []
    for n, header in enumerate(codes):
        index, _, code = header.partition(" ")
        if index != str(n) or n >= len(sections) or not code.lstrip("-").isdigit():
            return None
        results.append(CommandResult(sections[n].command, int(code), outs[n], errs[n] if n < len(errs) - 1 else "",
                                     answer.seconds))
    return results


def _marked(text: str, token: str) -> tuple[list[str], list[str]]:
    """``text`` cut at each "\n<token> HEADER\n" line: the texts before each, the headers.
    Plain string splitting, not a regular expression: a pattern holding the batch's own token
    was compiled anew for every batch (and pushed every other pattern out of re's cache), which
    made it a third of the controller's CPU with 1,000 simulated hosts (bench/bench_fleet.py)."""
    parts = text.split(f"\n{token} ")
    texts, headers = [parts[0]], []
    for part in parts[1:]:
        header, _, rest = part.partition("\n")
        headers.append(header)
        texts.append(rest)
    return texts, headers


def run_batch(shell: ShellProtocol, sections: list[Section], timeout: float | None = None) -> list[CommandResult] | None:
    """Run ``sections`` in one command on ``shell`` (within ``timeout``, else the sum of their
    own); see ``split`` for the answer."""
    token = new_token()
    total = sum(s.timeout for s in sections)
    answer = shell.run(script(sections, token), timeout=min(total, timeout or total), check=False)
    return split(answer, sections, token)


def prefetch(shell: ShellProtocol, sections: list[Section | None]) -> None:
    """Ask ``shell`` to run ``sections`` now, in one round trip, and answer the same commands
    from that batch when they are run next (cycle/prefetch.py). A shell that cannot prefetch
    (a plain transport) is left alone: the commands then run one by one, as before."""
    wanted = [s for s in sections if s is not None]
    ahead = getattr(shell, "prefetch", None)
    if ahead is not None:
        ahead(wanted)           # one command alone is not batched, but older answers are dropped
