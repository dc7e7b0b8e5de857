"""The pytest face: one item per inventory host, and platform/needs markers that skip hosts."""

from __future__ import annotations

import textwrap

pytest_plugins = ["pytester"]

INVENTORY = """\
version: 1
defaults:
  ssh: {user: root, host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIErlJgEnPkOt8ZfEAwZCubaTda4qRmB8qYJEfSEJpB7C"}
hosts:
  - {name: altra-01, arch: aarch64, platform: ampere-altra, features: [hwpoison_inject, einj], ssh: {address: 10.0.0.1}}
  - {name: vm-x86, arch: x86_64, platform: qemu-x86_64, features: [hwpoison_inject, mce_inject], ssh: {address: 10.0.0.2}}
"""


def test_hosts_are_parametrized_and_markers_skip_with_reasons(pytester):
    inventory = pytester.makefile(".yaml", inventory=INVENTORY)
    pytester.makepyfile(test_lab=textwrap.dedent("""
        import pytest

        def test_every_host(orch_host):
            assert orch_host.name in ("altra-01", "vm-x86")

        @pytest.mark.platform("ampere-altra")
        def test_only_altra(orch_host):
            assert orch_host.platform == "ampere-altra"

        @pytest.mark.needs("mce_inject")
        def test_needs_mce(orch_host):
            assert "mce_inject" in orch_host.features
    """))
    result = pytester.runpytest(f"--inventory={inventory}", "-rs", "-v")
    result.assert_outcomes(passed=4, skipped=2)
    result.stdout.fnmatch_lines(["*test_every_host?altra-01? PASSED*", "*test_every_host?vm-x86? PASSED*"])
    result.stdout.re_match_lines([r".*vm-x86 is qemu-x86_64, test wants ampere-altra.*",
                                  r".*altra-01 lacks feature\(s\) mce_inject.*"])


def test_without_an_inventory_host_tests_are_skipped_not_errors(pytester):
    pytester.makepyfile(test_lab="def test_needs_a_host(orch_host):\n    assert orch_host\n")
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no --inventory given*"])
