"""Shell stand-ins for the kernel/ tests (imported by the other test_kernel_*.py modules).

LocalShell runs commands on this machine with /bin/sh (dash, coreutils, mawk here) or with a
busybox tree like the lab guests have (set ORCH_TEST_BUSYBOX to a busybox binary, e.g. one
unpacked with `apt-get download busybox-static && dpkg-deb -x`). FakeShell answers from a table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from orchestrator.errors import FatalInfraError
from orchestrator.protocols.shell import CommandResult, ShellProtocol

BUSYBOX_APPLETS = ("sh", "awk", "dd", "od", "grep", "sed", "head", "cat", "sleep", "kill",
                   "mkdir", "rm", "chmod", "sync", "ls", "tail", "wc")


class LocalShell(ShellProtocol):
    def __init__(self, argv0: tuple[str, ...] = ("/bin/sh",), path: str | None = None):
        self.argv0, self.path, self.commands = argv0, path, []

    def run(self, command, *, timeout, check=True):
        self.commands.append(command)
        env = dict(os.environ, **({"PATH": self.path} if self.path else {}))
        started = time.monotonic()
        proc = subprocess.run([*self.argv0, "-c", command], capture_output=True, text=True,
                              timeout=timeout, env=env)
        result = CommandResult(command, proc.returncode, proc.stdout, proc.stderr,
                               time.monotonic() - started)
        if check and not result.ok:
            raise FatalInfraError(f"{command!r} exited {result.exit_code}: {result.stderr}")
        return result

    def fresh(self):
        return self

    def fire_detached(self, command, *, timeout, output):
        subprocess.Popen([*self.argv0, "-c", command], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self):
        pass


def busybox_shell(tmp_dir) -> LocalShell:
    """A LocalShell whose sh and every tool are busybox applets, or a pytest skip."""
    busybox = os.environ.get("ORCH_TEST_BUSYBOX") or shutil.which("busybox")
    if not busybox or not os.access(busybox, os.X_OK):
        pytest.skip("no busybox: set ORCH_TEST_BUSYBOX to a busybox binary")
    bindir = os.path.join(tmp_dir, "busybox-bin")
    os.makedirs(bindir, exist_ok=True)
    for applet in BUSYBOX_APPLETS:
        link = os.path.join(bindir, applet)
        if not os.path.exists(link):
            os.symlink(os.path.abspath(busybox), link)
    return LocalShell((os.path.join(bindir, "sh"),), path=bindir)


class FakeShell(ShellProtocol):
    """Answers each command from the first (regex, stdout[, exit_code, stderr]) rule matching it."""

    def __init__(self, rules):
        self.rules = [(re.compile(r[0], re.S), *r[1:]) for r in rules]
        self.commands: list[str] = []

    def run(self, command, *, timeout, check=True):
        self.commands.append(command)
        for pattern, stdout, *rest in self.rules:
            if pattern.search(command):
                code, stderr = (rest + [0, ""])[:2] if rest else (0, "")
                result = CommandResult(command, code, stdout, stderr, 0.01)
                if check and code:
                    raise FatalInfraError(f"{command!r} exited {code}")
                return result
        raise AssertionError(f"FakeShell: unexpected command {command[:300]!r}")

    def fresh(self):
        return self

    def fire_detached(self, command, *, timeout, output):
        self.commands.append(command)

    def close(self):
        pass


def test_fake_shell_matches_first_rule_and_records():
    shell = FakeShell([(r"^cat /a$", "A\n"), (r"cat", "other\n", 1, "boom")])
    assert shell.run("cat /a", timeout=1).stdout == "A\n"
    result = shell.run("cat /b", timeout=1, check=False)
    assert (result.exit_code, result.stderr) == (1, "boom")
    with pytest.raises(FatalInfraError):
        shell.run("cat /b", timeout=1)
    assert shell.commands == ["cat /a", "cat /b", "cat /b"]
