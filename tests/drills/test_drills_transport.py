"""Transport fault drills on a one-machine virtual lab, through the real transports: the BMC
killed or frozen mid-case, a slow BMC, a slow sshd banner, SSH dropped right after the
injection, the SOL console taken over by another client and regained.

Each drill runs its faulted case and then a normal one in the same run folder, and asserts
the verdicts and blame, the run's exit status, that the first case's files are untouched by
what came after, and that the host ends neither armed nor leased. What is right when the
BMC or the console is gone: a survive case whose host keeps answering SSH needs neither, so
it passes (the console's silence is not evidence, SSH's same boot is); it is never a kernel
fail. Drills share one lab and run in file order (the killed BMC comes before the panic
case, so the panic's reboot runs on a QEMU whose BMC was restarted).
"""

from __future__ import annotations

import os
import pty
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest
import yaml

from orchestrator.config.inventory import load_inventory
from orchestrator.fleet.plan import RunPlan
from orchestrator.fleet.runner import Runner
from orchestrator.results.store import load_run
from orchestrator.vlab.lab.lifecycle import console_command
import vlabs
from vlabs import private_lab

pytestmark = [pytest.mark.vlab, pytest.mark.x86_64]
REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "tests" / "playbooks" / "fleet.yaml"
EARLY_KILL = "/proc/sys/vm/memory_failure_early_kill"     # 0 on the guests; the fleet cases set 1
H = "vlab-x86-1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    yield from private_lab(tmp_path_factory, arch="x86_64", hosts=1)


@pytest.fixture
def machine_dir(lab) -> Path:
    return Path(os.environ["ORCH_LAB_DIR"]) / "machines" / H


def on_host(inventory: Path, command: str) -> str:
    return vlabs.on_host(inventory, H, command)


class Drill:
    """One drill's run: its cases in process with a hook, then the common assertions."""

    def __init__(self, inventory: Path, results: Path, cases: tuple[str, ...]):
        self.inventory, self.results, self.cases = inventory, results, cases
        self.first_files: dict[Path, bytes] = {}
        self.seen: list[tuple[str, str]] = []

    def run(self, fault=lambda case, state: None):
        def hook(host, case, state):
            self.seen.append((case, state))
            if state.startswith("done:") and case == self.cases[0]:
                self.first_files = {p: p.read_bytes() for p in (self.run_dir() / H / case).rglob("*") if p.is_file()}
            fault(case, state)

        plan = RunPlan.load(self.inventory, PLAYBOOK, hosts=(H,), cases=self.cases)
        self.result = Runner.new(plan, self.results, on_state=hook).run()
        return {c.case: c for c in self.result.cases}

    def run_dir(self) -> Path:
        return next(p for p in self.results.iterdir() if p.is_dir())

    def assert_kept_and_clean(self, lab: Path, exit_code: int = 0) -> None:
        """Exit status, both results in the folder, the first case's files untouched, and the
        host (seen directly, past any relay) neither armed nor leased."""
        assert self.result.exit_code() == exit_code
        assert [c.case for c in load_run(self.run_dir()).cases] == list(self.cases)
        assert self.first_files, "the first case's folder was seen when it ended"
        for path, data in self.first_files.items():   # nothing the first case wrote was lost
            assert path.read_bytes() == data, f"{path} changed after its case ended"
        state_dir = load_inventory(lab).host(H).state_dir
        assert on_host(lab, f"cat {EARLY_KILL}; test -e {state_dir}/armed && echo armed || echo unarmed; "
                                       f"test -e {state_dir}/lease && echo leased || echo free").split() == \
            ["0", "unarmed", "free"]


class Relay:
    """A TCP relay in front of the guest's forwarded SSH port. ``stall_first_s``: the first
    connection's first bytes from sshd are held that long (a slow banner). ``cut()`` drops
    every connection and blackholes new ones (accepted, never answered) until ``mend()``."""

    def __init__(self, target_port: int, stall_first_s: float = 0.0):
        self.target, self.stall_first_s = target_port, stall_first_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections, self.stalled, self.held = 0, 0, 0
        self.cut_off = threading.Event()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                first = self.connections == 1
                self._open.append(client)
            if self.cut_off.is_set():
                self.held += 1          # never answered: the client's banner timeout ends it
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._open.append(upstream)
            delay = self.stall_first_s if first else 0.0
            self.stalled += bool(delay)
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, delay), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        time.sleep(delay)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.cut_off.set()
        with self._lock:
            dropped, self._open = self._open, []
        for s in dropped:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def mend(self) -> None:
        self.cut_off.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def relayed_inventory(inventory: Path, relay: Relay, dest: Path) -> Path:
    """A copy of the lab inventory whose SSH goes through ``relay``, the host key pinned
    inline (known_hosts names the real port)."""
    data = yaml.safe_load(inventory.read_text())
    for host in data["hosts"]:
        ssh = host["ssh"]
        keys = paramiko.HostKeys(ssh.pop("known_hosts")).lookup(f"[{ssh['address']}]:{ssh['port']}")
        key = next(iter(keys.values()))
        ssh.update(port=relay.port, host_key=f"{key.get_name()} {key.get_base64()}")
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def ssh_port(inventory: Path) -> int:
    return load_inventory(inventory).host(H).ssh.port


def bmc_pid(machine_dir: Path) -> int:
    return int((machine_dir / "bmc.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# -- the drills ----------------------------------------------------------------------------------

def test_sshd_slow_to_send_its_banner_on_the_first_connection_still_passes(lab, tmp_path):
    relay = Relay(ssh_port(lab), stall_first_s=4.0)     # past the poll shell's 2 s banner timeout
    try:
        drill = Drill(relayed_inventory(lab, relay, tmp_path / "relayed.yaml"), tmp_path / "results",
                      ("survive-a", "survive-c"))
        by = drill.run()
    finally:
        relay.close()
    assert relay.stalled == 1
    assert [(c.verdict, c.blame) for c in by.values()] == [("pass", None)] * 2, [c.reasons for c in by.values()]
    drill.assert_kept_and_clean(lab)


def test_a_bmc_whose_replies_come_2_s_late_still_passes_and_the_next_case_is_normal(lab, machine_dir, tmp_path):
    knob = machine_dir / "bmc.reply_delay"

    activate, env = console_command(H)
    took = []

    def slow_bmc_for_the_first_case(case, state):
        if state == "armed" and case == "survive-a":       # the knob is in effect: a plain client waits
            started = time.monotonic()
            subprocess.run(activate[:-2] + ["-N", "5", "-R", "1", "chassis", "power", "status"], env=env,
                           capture_output=True, timeout=60)
            took.append(time.monotonic() - started)
        if state.startswith("done:"):
            knob.unlink(missing_ok=True)

    knob.write_text("2\n")
    try:
        drill = Drill(lab, tmp_path, ("survive-a", "survive-c"))
        by = drill.run(slow_bmc_for_the_first_case)
    finally:
        knob.unlink(missing_ok=True)
    assert [(c.verdict, c.blame) for c in by.values()] == [("pass", None)] * 2, [c.reasons for c in by.values()]
    assert took and took[0] >= 2.0, took
    drill.assert_kept_and_clean(lab)


def test_bmc_frozen_longer_than_its_timeouts_mid_case_then_resumed(lab, machine_dir, tmp_path):
    pid = bmc_pid(machine_dir)
    resumed = []

    def freeze_the_bmc(case, state):
        if case == "survive-a" and state == "armed":
            os.kill(pid, signal.SIGSTOP)        # past SOL's 3 s health, pyghmi's ~9 s retries
            timer = threading.Timer(20.0, lambda: (os.kill(pid, signal.SIGCONT), resumed.append(1)))
            timer.daemon = True
            timer.start()
        if state.startswith("done:") and case == "survive-a":
            end = time.monotonic() + 30.0       # the next case starts with the BMC back
            while not resumed and time.monotonic() < end:
                time.sleep(0.2)

    try:
        drill = Drill(lab, tmp_path, ("survive-a", "survive-c"))
        by = drill.run(freeze_the_bmc)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert resumed and alive(pid)
    frozen, after = by["survive-a"], by["survive-c"]
    assert (frozen.verdict, frozen.blame) == ("pass", None), frozen.reasons
    assert (after.verdict, after.blame) == ("pass", None), after.reasons
    drill.assert_kept_and_clean(lab)


def test_bmc_killed_mid_case_the_case_passes_and_the_next_works_once_it_is_restarted(lab, machine_dir, tmp_path):
    from orchestrator.vlab.bmc.process import start_bmc_process
    from orchestrator.vlab.lab.layout import BMC_USER, LabPaths
    bmc = load_inventory(lab).host(H).bmc
    qemu = int((machine_dir / "qemu.pid").read_text())

    def kill_the_bmc(case, state):
        if case == "survive-a" and state == "armed":
            os.kill(bmc_pid(machine_dir), signal.SIGKILL)      # QEMU keeps running
        if case == "survive-a" and state.startswith("done:"):
            assert alive(qemu)
            start_bmc_process(machine_dir, LabPaths(Path(os.environ["ORCH_LAB_DIR"])).bmc_password, BMC_USER,
                              port=bmc.port)      # on its old port: the inventory still names it

    drill = Drill(lab, tmp_path, ("survive-a", "survive-c"))
    by = drill.run(kill_the_bmc)
    killed, after = by["survive-a"], by["survive-c"]
    assert (killed.verdict, killed.blame) == ("pass", None), killed.reasons
    assert (after.verdict, after.blame) == ("pass", None), after.reasons
    assert alive(qemu) and "adopted the running QEMU" in (machine_dir / "bmc.log").read_text()
    drill.assert_kept_and_clean(lab)


def test_ssh_dropped_right_after_the_injection_is_judged_by_observation(lab, tmp_path):
    relay = Relay(ssh_port(lab))

    def drop_ssh(case, state):
        if case == "survive-a" and state == "injected":
            relay.cut()          # every connection dropped, new ones never answered ...
            threading.Timer(8.0, relay.mend).start()     # ... for 8 s: two failed polls and more

    try:
        drill = Drill(relayed_inventory(lab, relay, tmp_path / "relayed.yaml"), tmp_path / "results",
                      ("survive-a", "survive-c"))
        by = drill.run(drop_ssh)
    finally:
        relay.close()
    dropped = by["survive-a"]
    assert relay.held >= 1
    assert (dropped.verdict, dropped.blame) == ("pass", None), dropped.reasons
    assert not dropped.recovery or not any("power" in r for r in dropped.recovery), dropped.recovery
    assert dropped.boot_id_before == dropped.boot_id_after
    assert by["survive-c"].verdict == "pass", by["survive-c"].reasons
    drill.assert_kept_and_clean(lab)


def test_sol_taken_over_by_another_client_mid_case_then_regained_sees_the_panic(lab, tmp_path):
    activate, env = console_command(H)                       # what `orchestrator lab console` runs
    deactivate = activate[:-1] + ["deactivate"]
    intruder: list[subprocess.Popen] = []

    def take_over_the_console(case, state):
        if case == "panic-b" and state == "preflight":       # an operator kicks our console off
            subprocess.run(deactivate, env=env, capture_output=True, timeout=30)
            _, tty = pty.openpty()                            # ipmitool's SOL wants a terminal
            intruder.append(subprocess.Popen(activate, env=env, stdin=tty, stdout=tty, stderr=tty))
            time.sleep(3.0)                                  # ours notices it lost the console
        if case == "panic-b" and state == "targeted":        # the intruder leaves; ours takes it back
            intruder[0].kill()
            intruder[0].wait(timeout=10)
            subprocess.run(deactivate, env=env, capture_output=True, timeout=30)
            time.sleep(8.0)                                  # the keeper's backoff (up to 5 s)

    drill = Drill(lab, tmp_path, ("panic-b", "survive-c"))
    try:
        by = drill.run(take_over_the_console)
    finally:
        for proc in intruder:
            proc.kill()
    panic = by["panic-b"]
    assert (panic.verdict, panic.blame) == ("pass", None), panic.reasons
    assert any(e.source == "console" and "unrecoverable page" in e.text for e in panic.evidence), panic.evidence
    console_log = (drill.run_dir() / H / "panic-b" / "console.log").read_text()
    assert "Kernel panic" in console_log                 # the transcript resumed after the takeover
    assert by["survive-c"].verdict == "pass", by["survive-c"].reasons
    drill.assert_kept_and_clean(lab)
