"""The few error classes of the orchestrator, each with one meaning.

Retry or stop is decided by type (MAAS style), never by parsing a message:

- ``ConfigError``     bad input (inventory, playbook, lab config, CLI). Fatal; exit status 2.
- ``InfraError``      the lab failed us (BMC, SSH, SOL, disk, QEMU). Subclasses split it:
  - ``RetryableInfraError`` may succeed if tried again (timeouts, refused connections,
    a host still rebooting); callers wrap these in tenacity retries.
  - ``FatalInfraError`` will not get better by retrying (authentication refused,
    a missing binary, a host that never came back within its whole deadline).
- ``DeadlineExceeded`` a state of the per-case cycle overran its own deadline (a
  ``FatalInfraError`` because the cycle has already waited as long as it may).
- ``UnsupportedOperation`` a capability the backend or platform does not offer (Ironic's
  UnsupportedDriverExtension): NMI on a BMC without it, a console that cannot send a break.
  Callers fall back to the next means (recovery: NMI, then power cycle).

A kernel that did not do what a case expects is no error at all: it is a verdict ("fail")
with its reasons, decided by ``cycle/verify.py``.

The process's exit statuses are defined here once, for every face.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(OrchestratorError):
    """Bad input: names the file, the line and what is wrong. Exit status 2."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field, self.detail = path, line, field, message
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}")


#: Who is to blame for a verdict other than pass (results/model.py CaseResult.blame). "fail"
#: is always the kernel, the system under test; an error names what kept the case from a
#: verdict: the crash kernel and its dump, the platform firmware, the lab (BMC, network,
#: power, disks, other users of the host), or this program itself.
KERNEL, KDUMP, FIRMWARE, LAB, ORCHESTRATOR = "kernel", "kdump", "firmware", "lab", "orchestrator"
BLAMES = (KERNEL, KDUMP, FIRMWARE, LAB, ORCHESTRATOR)


class BlamedText(str):
    """A reason in words that also says who is to blame for it (one of BLAMES); subclasses
    name their usual culprit (a verifier's finding: the kernel; an unusable injector: the lab)."""

    default_blame = ORCHESTRATOR
    blame: str

    def __new__(cls, text: str, blame: str | None = None) -> "BlamedText":
        reason = super().__new__(cls, text)
        reason.blame = blame or cls.default_blame
        return reason


class InfraError(OrchestratorError):
    """The lab, not the kernel, failed. Verdict 'error', exit status 3. ``blame`` says which
    part of the lab (LAB unless the raiser knows better: KDUMP, FIRMWARE)."""

    retryable = False

    def __init__(self, *args, blame: str = LAB):
        super().__init__(*args)
        self.blame = blame


class RetryableInfraError(InfraError):
    """Transient: a later attempt may succeed."""

    retryable = True


class FatalInfraError(InfraError):
    """Permanent for this run: do not retry."""


class DeadlineExceeded(FatalInfraError):
    """A cycle state overran its deadline."""

    def __init__(self, state: str, seconds: float, detail: str = ""):
        self.state, self.seconds = state, seconds
        super().__init__(f"{state}: no progress within {seconds:.0f} s" + (f" ({detail})" if detail else ""))


class UnsupportedOperation(OrchestratorError):
    """A capability the backend or platform does not offer."""


#: Exit statuses of every command: all pass, any kernel fail, bad input, infrastructure error
#: (or a host left armed), and a run in which no case reached a verdict (all skipped).
#: When a run has both failures and errors, 1 wins: a kernel failure is the news.
EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INFRA, EXIT_NO_VERDICT = 0, 1, 2, 3, 4
#: Ctrl-C: the shell's convention (128 + SIGINT).
EXIT_INTERRUPTED = 130
