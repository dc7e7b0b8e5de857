"""A throwaway PostgreSQL cluster for the engine's tests and benchmark: initdb in a private
temp folder, a server on a free loopback port (and a socket in that folder), one database;
always stopped and removed. Debian's ``postgresql`` package (scripts/setup.sh) provides the
binaries; their absence is an error, never a silent skip."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

DB_NAME = "memfail"


def postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
                           "run scripts/setup.sh, which installs Debian's postgresql")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the package's ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """Yields the DSN of an empty database on a private, running cluster."""
    bindir = postgres_bindir()
    # not pytest's tmp_path: it is root-only (0700) and the server runs as postgres
    folder = Path(tempfile.mkdtemp(prefix="orch-pg-"))
    data = folder / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    port = _free_port()
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        _run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                           "--no-sync", "-E", "UTF8"]))
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        _run(_as_postgres([*pg_ctl, "-o", options, "-l", str(folder / "server.log"), "-w", "start"]))
        started = True
        _run(_as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                           DB_NAME]))
        yield f"postgresql://postgres@127.0.0.1:{port}/{DB_NAME}"
    finally:
        if started:
            subprocess.run(_as_postgres([*pg_ctl, "-m", "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
