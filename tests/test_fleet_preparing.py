"""Hosts preparing at once (fleet/preparing.py): the slot a host holds while it is opened and
while a case runs its steps up to the injection."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import pytest

from orchestrator.config.model import Inventory
from orchestrator.config.playbook import Playbook
from orchestrator.fleet import runner as runner_module
from orchestrator.fleet.host_handles import CommandLog, HostSession
from orchestrator.fleet.plan import RunPlan
from orchestrator.fleet.preparing import PreparingSlots
from orchestrator.fleet.run_folder import RunFolder
from orchestrator.fleet.runner import Runner
from tests.fakehost import FakeLabHost
from tests.test_cycle import make_case


def test_no_more_than_the_limit_hold_a_slot_and_a_slot_given_back_early_lets_the_next_in():
    slots, lock = PreparingSlots(2), threading.Lock()
    inside, most, gave_back_early = [0], [0], threading.Event()

    def host(early: bool) -> None:
        with slots.slot() as prepared:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1
            if early:
                prepared()
                gave_back_early.wait(5)         # holds on without its slot

    threads = [threading.Thread(target=host, args=(i == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(10)
    gave_back_early.set()
    threads[0].join(10)
    assert most[0] == 2 and not any(t.is_alive() for t in threads)


def test_a_stopped_run_does_not_wait_for_a_slot():
    slots, entered = PreparingSlots(1), threading.Event()

    def second_host() -> None:
        with slots.slot():
            entered.set()

    with slots.slot():
        waiting = threading.Thread(target=second_host)
        waiting.start()
        assert not entered.wait(0.2)            # the slot is taken: it waits ...
        slots.stop()
        assert entered.wait(2)                  # ... until the run stops
        started = time.monotonic()
        with slots.slot():                      # and nobody waits after that
            assert time.monotonic() - started < 1
    waiting.join(2)


def test_hosts_waiting_for_a_slot_sleep_until_one_is_given_back_and_get_it_in_turn():
    slots, order, woken = PreparingSlots(1), [], [0]
    real_wait = threading.Condition.wait

    def counted_wait(self, *args, **kwargs):
        woken[0] += threading.current_thread() in threads
        return real_wait(self, *args, **kwargs)

    def host(name: str) -> None:
        with slots.slot():
            order.append(name)

    with slots.slot():
        threads = []
        for i in range(4):
            threads.append(threading.Thread(target=host, args=(f"h{i}",)))
            threads[-1].start()
            deadline = time.monotonic() + 2
            while slots.waiting <= i and time.monotonic() < deadline:
                time.sleep(0.001)               # each in the queue before the next starts
        threading.Condition.wait = counted_wait     # counting only these hosts' threads
        try:
            time.sleep(0.5)                     # a poll every 0.2 s would have woken them ~10 times
            assert woken[0] == 0
        finally:
            threading.Condition.wait = real_wait
    for t in threads:
        t.join(2)
    assert order == ["h0", "h1", "h2", "h3"]


def fleet(tmp_path, names, cases, **fake):
    """A plan over fake hosts of these names, and the opener that reaches them."""
    fakes = {name: FakeLabHost(**fake) for name in names}
    hosts = tuple(replace(f.handles().host, name=name, state_dir=f.state_dir) for name, f in fakes.items())

    @contextmanager
    def open_host(h, host_dir, *, commands_log=None):
        fake = fakes[h.name]
        yield HostSession(handles=replace(fake.handles(), host=h), commands=CommandLog(commands_log),
                          lease_shell=fake.shell)

    plan = RunPlan(inventory=Inventory(path=tmp_path / "inv.yaml", hosts=hosts, digest="i" * 64),
                   playbook=Playbook(path=tmp_path / "pb.yaml", name="pb", digest="p" * 64,
                                     cases=tuple(make_case(outcome="survive", name=c) for c in cases)))
    return plan, open_host


SURVIVING = dict(behaviour="survive", sysctls={"vm.panic_on_unrecoverable_memory_failure": "0"})


@pytest.mark.usefixtures("stub_kernel_seams")
def test_a_runs_hosts_prepare_their_cases_one_at_a_time_under_a_limit_of_one(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "MAX_HOSTS_PREPARING", 1)
    plan, open_host = fleet(tmp_path, ("h0", "h1", "h2"), ("c1",), command_s=0.01, **SURVIVING)
    seen: list[tuple[float, str, str]] = []
    run = Runner(RunFolder.create(tmp_path / "results", plan), open_host=open_host,
                 on_state=lambda host, case, state: seen.append((time.monotonic(), host, state))).run()
    assert [c.verdict for c in run.cases] == ["pass"] * 3, [c.reasons for c in run.cases]
    spans = sorted((min(t for t, h, s in seen if h == name), max(t for t, h, s in seen if h == name and s == "injected"))
                   for name in ("h0", "h1", "h2"))
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def test_a_run_of_more_hosts_than_the_preparing_limit_switches_the_gil_less_often_until_it_ends():
    import sys

    from orchestrator.fleet.preparing import fleet_switch_interval
    from orchestrator.tunables import FLEET_SWITCH_INTERVAL_S, MAX_HOSTS_PREPARING

    before, big = sys.getswitchinterval(), MAX_HOSTS_PREPARING + 1
    with fleet_switch_interval(MAX_HOSTS_PREPARING):            # a run the limit never meets
        assert sys.getswitchinterval() == before
    with fleet_switch_interval(big):
        assert sys.getswitchinterval() == pytest.approx(max(before, FLEET_SWITCH_INTERVAL_S))
    assert sys.getswitchinterval() == before
    first, second = fleet_switch_interval(big), fleet_switch_interval(big)    # two runs in one process
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)                            # the first one ends first
    assert sys.getswitchinterval() == pytest.approx(max(before, FLEET_SWITCH_INTERVAL_S))
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == before


@pytest.mark.usefixtures("stub_kernel_seams")
def test_a_host_waiting_for_its_slot_when_the_run_stops_injects_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "MAX_HOSTS_PREPARING", 1)
    plan, reach = fleet(tmp_path, ("h0", "h1"), ("c1", "c2"), **SURVIVING)
    opened, seen, runner = set(), [], None

    @contextmanager
    def open_host(h, host_dir, *, commands_log=None):
        with reach(h, host_dir, commands_log=commands_log) as session:
            opened.add(h.name)
            yield session

    def on_state(host, case, state):
        seen.append((host, state))
        if state != "armed" or runner._stop.is_set() or len(opened) < 2:
            return
        deadline = time.monotonic() + 5     # this host holds the only slot: the other one comes to wait
        while runner._preparing.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        if runner._preparing.waiting:
            seen.append(("run", "stopped"))
            runner._stopping()              # what a Ctrl-C does

    runner = Runner(RunFolder.create(tmp_path / "results", plan), open_host=open_host, on_state=on_state)
    run = runner.run()
    after = seen[seen.index(("run", "stopped")):]
    assert [state for _, state in after].count("injected") == 1, seen     # only the case in flight
    skipped = [c.reasons[0] for c in run.cases if c.verdict != "pass"]
    assert skipped and set(skipped) == {"interrupted before this case started"}, run.cases


@pytest.mark.usefixtures("stub_kernel_seams")
def test_a_host_whose_results_cannot_be_written_stops_the_other_hosts_new_cases_at_once(tmp_path, monkeypatch):
    import errno

    from orchestrator.results import store

    plan, open_host = fleet(tmp_path, ("h0", "h1"), ("c1", "c2", "c3"), **SURVIVING)
    refused, real_replace, seen, runner = threading.Event(), store._replace_atomically, [], None

    def h0_refused(path, payload):
        if path.name == "result.json" and path.parent.parent.name == "h0":
            refused.set()
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(path, payload)

    def on_state(host, case, state):
        seen.append((host, case, state))
        if (host, case, state) == ("h1", "c1", "armed"):
            assert refused.wait(10)
            runner._stop.wait(10)       # h1's first case is in flight when the run stops

    monkeypatch.setattr(store, "_replace_atomically", h0_refused)
    runner = Runner(RunFolder.create(tmp_path / "results", plan), open_host=open_host, on_state=on_state)
    with pytest.raises(store.ResultsWriteError, match="No space left"):
        runner.run()
    assert ("h1", "c1", "restored") in seen                                # the case in flight finished
    assert not [s for h, c, s in seen if h == "h1" and c != "c1" and not s.startswith("done:")], seen
