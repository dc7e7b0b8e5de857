"""Secrets and host keys on the virtual lab (x86_64, TCG): a run whose BMC password and SSH
key passphrase come from the environment leaves neither anywhere (files, process command
lines), and a host whose pinned key changed is an error for every case, never a login."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from orchestrator.faces.cli.main import main
from orchestrator.results.store import load_run
from orchestrator.vlab.lab.layout import LabPaths

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64]
REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / "playbooks/smoke.yaml")
BMC_VAR, PASSPHRASE_VAR = "MEMFAIL_TEST_BMC_PASSWORD", "MEMFAIL_TEST_KEY_PASSPHRASE"


@pytest.fixture(scope="module")
def lab(vlab_x86) -> tuple[Path, LabPaths]:
    """The lab's inventory and its folder (the fixture points ORCH_LAB_DIR at it)."""
    return vlab_x86, LabPaths(Path(os.environ["ORCH_LAB_DIR"]))


def variant(inventory: Path, out: Path, **ssh_bmc) -> Path:
    """The lab's inventory with the host's ``ssh`` and ``bmc`` fields changed as given."""
    data = yaml.safe_load(inventory.read_text())
    for section, changes in ssh_bmc.items():
        for key, value in changes.items():
            if value is None:
                data["hosts"][0][section].pop(key, None)
            else:
                data["hosts"][0][section][key] = value
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


class CommandLines:
    """Every process's command line, sampled from /proc while a run goes on (not environ:
    the run's own environment legitimately holds the variables)."""

    def __init__(self, interval: float = 0.1):
        self.seen: dict[tuple[int, bytes], None] = {}
        self.samples, self._interval, self._stop = 0, interval, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    self.seen.setdefault((int(proc.name), (proc / "cmdline").read_bytes()), None)
                except OSError:         # gone in between
                    pass
            self.samples += 1

    def __enter__(self) -> "CommandLines":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def occurrences(path: Path, needles: list[bytes]) -> int:
    """How often any needle occurs in the file, read in overlapping chunks (disks are 2 GiB)."""
    overlap, found, tail = max(map(len, needles)) - 1, 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            window = tail + chunk
            found += sum(window.count(n) - tail.count(n) for n in needles)
            tail = window[-overlap:]
    return found


def test_secrets_from_the_environment_appear_nowhere(lab, tmp_path):
    inventory, paths = lab
    bmc_password = paths.bmc_password.read_text().strip()   # the lab BMC's real password
    assert len(bmc_password) >= 16, "not distinctive enough to scan for"
    passphrase = f"pp-{secrets.token_urlsafe(18)}"
    key = tmp_path / "client_key_encrypted"
    shutil.copyfile(paths.client_key, key)
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", passphrase, "-f", str(key)], check=True,
                   capture_output=True)
    assert subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(key)], capture_output=True).returncode != 0
    inv = variant(inventory, tmp_path / "secrets.yaml",
                  ssh={"key_file": str(key), "key_passphrase": {"env": PASSPHRASE_VAR}},
                  bmc={"password": {"env": BMC_VAR}})
    results = tmp_path / "results"
    env = {**os.environ, BMC_VAR: bmc_password, PASSPHRASE_VAR: passphrase}
    argv = [sys.executable, "-c", "import sys; from orchestrator.faces.cli.main import main; "
            "sys.exit(main(sys.argv[1:]))", "run", "-i", str(inv), SMOKE, "--results", str(results)]
    with CommandLines() as procs:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=600)
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    run = load_run(run_dir)
    assert {c.case: c.verdict for c in run.cases} == {"rodata-panic": "pass", "rodata-survive": "pass"}, \
        [(c.case, c.reasons) for c in run.cases]
    assert done.returncode == 0, done.stderr.decode()[-2000:]

    needles = [bmc_password.encode(), passphrase.encode()]
    assert occurrences(paths.bmc_password, needles) == 1     # the scan does find what is there
    scanned = [p for p in run_dir.rglob("*") if p.is_file()]
    scanned += [p for p in paths.root.rglob("*") if p.is_file() and paths.keys not in p.parents
                and not p.name.startswith("ssh_host_")]
    assert {"console.log", "commands.log", "bmc.log", "run.json"} <= {p.name for p in scanned}
    assert len([p for p in scanned if p.name == "commands.log"]) >= 2     # one per case at least
    leaks = {str(p): n for p in scanned + [inv] if (n := occurrences(p, needles))}
    leaks.update({f"cmdline of pid {pid}": 1 for pid, cmd in procs.seen
                  if any(n in cmd for n in needles)})
    leaks.update({f"run's {name}": 1 for name, text in (("stdout", done.stdout), ("stderr", done.stderr))
                  if any(n in text for n in needles)})
    print(f"scanned {len(scanned) + 1} files ({sum(p.stat().st_size for p in scanned) >> 20} MiB), "
          f"{len(procs.seen)} command lines of {len({pid for pid, _ in procs.seen})} processes "
          f"in {procs.samples} samples")
    assert procs.samples > 10 and any(b"faces.cli.main" in cmd for _, cmd in procs.seen)
    assert leaks == {}


def test_a_changed_host_key_is_an_error_naming_the_host_and_nothing_is_injected(lab, tmp_path, capsys,
                                                                                 monkeypatch):
    inventory, _ = lab
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")],
                   check=True)
    impostor = " ".join((tmp_path / "impostor.pub").read_text().split()[:2])
    inv = variant(inventory, tmp_path / "changed-key.yaml", ssh={"known_hosts": None, "host_key": impostor})
    host = yaml.safe_load(inv.read_text())["hosts"][0]
    where = f"{host['ssh']['address']}:{host['ssh']['port']}"

    code = main(["run", "-i", str(inv), SMOKE, "--results", str(tmp_path / "results")])
    (run_dir,) = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    run = load_run(run_dir)
    assert code == 3
    assert [c.case for c in run.cases] == ["rodata-panic", "rodata-survive"]
    for case in run.cases:
        assert (case.verdict, case.blame) == ("error", "lab"), (case.case, case.verdict, case.reasons)
        assert case.host == host["name"]
        assert any(where in r and "host key mismatch" in r for r in case.reasons), case.reasons
    assert not any("corrupt-pfn" in p.read_text() for p in run_dir.rglob("commands.log"))

    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "400")        # rich: the table's cells whole, one row a line
    assert main(["inventory", "check", str(inv)]) == 3
    rows = [line for line in capsys.readouterr().out.splitlines() if f" {host['name']} " in line]
    assert len(rows) == 1 and f"FAIL ssh root@{where}: host key mismatch" in rows[0], rows
