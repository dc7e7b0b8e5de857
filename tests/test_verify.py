"""The verifier on captured kernel text, for every semantics the matrix knows.

v4-like semantics exist in no packaged kernel, so their cases are judged here on text written
from the v4 series' own format strings (kernel-facts.md §1.3) and the seed thread's capture."""

from __future__ import annotations

import pytest

from orchestrator.config.playbook import Case, Expectation, Limits
from orchestrator.cycle.expectations import ExpectationResolver
from orchestrator.kernel.semantics import KernelSemantics
from orchestrator.cycle.verify import Observation, judge_panic, judge_survive

KNOB = "vm.panic_on_unrecoverable_memory_failure"

# v4 (20260415-ecc_panic-v4): a slab page goes through MF_MSG_GET_HWPOISON and does not panic
V4_SLAB = """\
[   65.295017] Injecting memory failure at pfn 0x1033
[   65.295100] Memory failure: 0x1033: unhandlable page.
[   65.295190] Memory failure: 0x1033: recovery action for get hwpoison page: Ignored
"""
# v4: a reserved page is MF_MSG_KERNEL and panics with the same signature as v10
V4_RODATA = """\
[   93.655960] Injecting memory failure at pfn 0x38830
[   93.656139] Memory failure: 0x38830: recovery action for reserved kernel page: Ignored
[   93.657011] Kernel panic - not syncing: Memory failure: 0x38830: unrecoverable page
"""
# v10-like (Debian 7.3.4, kernel-7.3-behaviour.md): the same slab page panics
V10_SLAB = """\
[   65.295017] Injecting memory failure at pfn 0x1033
[   65.295100] Memory failure: 0x1033: unhandlable page.
[   65.295190] Memory failure: 0x1033: recovery action for reserved kernel page: Ignored
[   65.296000] Kernel panic - not syncing: Memory failure: 0x1033: unrecoverable page
"""
# legacy (6.1, vm.memory_failure_recovery=0): any page, other signature, pfn without 0x
LEGACY = """\
[   18.756796] Injecting memory failure at pfn 0x2
[   18.757154] Kernel panic - not syncing: Memory failure on page 2
"""


class Known(ExpectationResolver):
    def __init__(self, name: str):
        super().__init__()
        self._semantics = KernelSemantics(name, ("given by the test",))


def case(target: str, sysctls: dict) -> Case:
    return Case(name="c", injector="hwpoison_inject", target=target, pfn=None,
                sysctls=tuple((k, str(v)) for k, v in sysctls.items()),
                expect=Expectation(outcome="matrix"), limits=Limits())


def judge(semantics: str, target: str, sysctls: dict, text: str, pfn: int) -> list[str]:
    expect = Known(semantics)(case(target, sysctls), shell=None)
    lines = tuple(text.splitlines())
    if expect.outcome == "panic":
        obs = Observation(pfn=pfn, console=lines, dump_dmesg=text, rebooted=True,
                          vmcoreinfo={"CRASHTIME": "1795628243"}, inject_epoch=1795628242)
        return judge_panic(obs, expect)
    return judge_survive(Observation(pfn=pfn, console=lines, live_dmesg=text), expect)


def test_v4_slab_survives_with_get_hwpoison_page():
    assert judge("v4-like", "slab", {KNOB: 1}, V4_SLAB, 0x1033) == []


def test_v4_rodata_panics_with_the_new_signature():
    assert judge("v4-like", "kernel-rodata", {KNOB: 1}, V4_RODATA, 0x38830) == []


def test_a_v10_slab_panic_is_a_failure_for_a_v4_kernel():
    reasons = judge("v4-like", "slab", {KNOB: 1}, V10_SLAB, 0x1033)
    assert any("panicked" in r for r in reasons)
    assert any("'reserved kernel page'" in r and "'get hwpoison page'" in r for r in reasons)


def test_a_v4_slab_that_does_not_panic_is_a_failure_for_a_v10_kernel():
    reasons = judge("v10-like", "slab", {KNOB: 1}, V4_SLAB, 0x1033)
    assert any("no kernel panic line" in r for r in reasons)


@pytest.mark.parametrize("semantics", ["legacy", "v4-like", "v10-like"])
def test_recovery_off_panics_with_the_legacy_signature_everywhere(semantics):
    assert judge(semantics, "free-buddy", {"vm.memory_failure_recovery": 0}, LEGACY, 0x2) == []


def test_legacy_signature_is_not_accepted_where_the_new_one_is_expected():
    text = V4_RODATA.replace("Memory failure: 0x38830: unrecoverable page", "Memory failure on page 38830")
    reasons = judge("v10-like", "kernel-rodata", {KNOB: 1}, text, 0x38830)
    assert any("not the expected new memory-failure signature" in r for r in reasons)


# EINJ 0x20 in the lab (einj-lab-firmware.md): the platform raises a machine check with PCC set
FATAL_MCE = """\
[   41.112233] mce: [Hardware Error]: CPU 0: Machine Check Exception: 5 Bank 9: be000000000000c0
[   41.112300] mce: [Hardware Error]: TSC 41981f0e1 ADDR 1fe30000 MISC 86
[   41.112400] mce: [Hardware Error]: Machine check: Processor context corrupt
[   41.112500] Kernel panic - not syncing: Fatal machine check
"""


def test_a_fatal_machine_check_passes_a_machine_check_case_and_no_memory_failure_one():
    obs = Observation(pfn=0x1FE30, console=tuple(FATAL_MCE.splitlines()), dump_dmesg=FATAL_MCE,
                      vmcoreinfo={"CRASHTIME": "1795628001"}, inject_epoch=1795628000, rebooted=True)
    assert judge_panic(obs, Expectation(outcome="panic", signature="machine-check")) == []
    reasons = judge_panic(obs, Expectation(outcome="panic", signature="any"))
    assert any("not the expected any memory-failure signature" in r for r in reasons), reasons
    rodata = Observation(pfn=0x38830, console=tuple(V4_RODATA.splitlines()), dump_dmesg=V4_RODATA,
                         vmcoreinfo={"CRASHTIME": "1795628001"}, inject_epoch=1795628000, rebooted=True)
    assert any("machine-check signature" in r for r in
               judge_panic(rodata, Expectation(outcome="panic", signature="machine-check")))
