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
            assert time.monotonic() - started < 0.1
    waiting.join(2)


def test_hosts_waiting_for_a_slot_sleep_until_one_is_given_back_and_get_it_in_turn():
    slots, order, woken = PreparingSlots(1), [], [0]
    real_wait = threading.Condition.wait

    def counted_wait(self, *args, **kwargs):
        woken[0] += 1
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
        threading.Condition.wait = counted_wait
        try:
            time.sleep(0.5)                     # a poll every 0.2 s would have woken them ~10 times
            assert woken[0] == 0
        finally:
            threading.Condition.wait = real_wait
    for t in threads:
        t.join(2)
    assert order == ["h0", "h1", "h2", "h3"]


@pytest.mark.usefixtures("stub_kernel_seams")
def test_a_runs_hosts_prepare_their_cases_one_at_a_time_under_a_limit_of_one(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "MAX_HOSTS_PREPARING", 1)
    fakes = {f"h{i}": FakeLabHost(behaviour="survive", command_s=0.01,
                                  sysctls={"vm.panic_on_unrecoverable_memory_failure": "0"}) for i in range(3)}
    hosts = tuple(replace(fake.handles().host, name=name, state_dir=fake.state_dir) for name, fake in fakes.items())

    @contextmanager
    def open_host(h, host_dir, *, commands_log=None):
        fake = fakes[h.name]
        yield HostSession(handles=replace(fake.handles(), host=h), commands=CommandLog(commands_log),
                          lease_shell=fake.shell)

    seen: list[tuple[float, str, str]] = []
    plan = RunPlan(inventory=Inventory(path=tmp_path / "inv.yaml", hosts=hosts, digest="i" * 64),
                   playbook=Playbook(path=tmp_path / "pb.yaml", name="pb", digest="p" * 64,
                                     cases=(make_case(outcome="survive", name="c1"),)))
    run = Runner(RunFolder.create(tmp_path / "results", plan), open_host=open_host,
                 on_state=lambda host, case, state: seen.append((time.monotonic(), host, state))).run()
    assert [c.verdict for c in run.cases] == ["pass"] * 3, [c.reasons for c in run.cases]
    spans = sorted((min(t for t, h, s in seen if h == name), max(t for t, h, s in seen if h == name and s == "injected"))
                   for name in fakes)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def test_a_run_of_more_hosts_than_the_preparing_limit_switches_the_gil_less_often_until_it_ends():
    import sys

    from orchestrator.fleet.preparing import fleet_switch_interval
    from orchestrator.tunables import FLEET_SWITCH_INTERVAL_S, MAX_HOSTS_PREPARING

    before = sys.getswitchinterval()
    with fleet_switch_interval(MAX_HOSTS_PREPARING):            # a run the limit never meets
        assert sys.getswitchinterval() == before
    with fleet_switch_interval(MAX_HOSTS_PREPARING + 1):
        assert sys.getswitchinterval() == pytest.approx(max(before, FLEET_SWITCH_INTERVAL_S))
    assert sys.getswitchinterval() == before
