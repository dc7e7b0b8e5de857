"""Inventory and playbook validation: every malformed file names its file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.faces.cli.main import main
from orchestrator.config.inventory import load_inventory
from orchestrator.config.playbook import DEFAULT_DEADLINES, PAGE_CLASSES, load_playbook
from orchestrator.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


# `files` (an inventory's key, known_hosts and password files): tests/conftest.py


GOOD_INVENTORY = """\
version: 1
defaults:
  ssh: {user: root, key_file: id_key, known_hosts: known_hosts}
  bmc: {user: admin, password: {file: bmc-password}}
groups:
  rack-a:
    defaults: {destructive: true, platform: ampere-altra}
    hosts: [srv1]
hosts:
  - name: srv1
    arch: aarch64
    features: [hwpoison_inject, kdump, sol]
    ssh: {address: 10.1.2.3, port: 22}
    bmc: {address: 10.1.9.3}
  - name: vm2
    arch: x86_64
    platform: qemu-x86_64
    ssh: {address: 127.0.0.1, port: 2222, host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"}
    kdump: {layout: rhel}
    bmc: null
"""


def write(dir_: Path, name: str, text: str) -> Path:
    path = dir_ / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_inventory_merges_defaults_groups_and_host(files: Path) -> None:
    inv = load_inventory(write(files, "inv.yaml", GOOD_INVENTORY))
    srv1, vm2 = inv.host("srv1"), inv.host("vm2")
    assert srv1.destructive and srv1.platform == "ampere-altra" and srv1.groups == ("rack-a",)
    assert srv1.bmc.port == 623 and srv1.bmc.password.resolve() == "secret"
    assert srv1.ssh.key_file == files / "id_key" and srv1.ssh.known_hosts == files / "known_hosts"
    assert srv1.features == {"hwpoison_inject", "kdump", "sol"}
    assert not vm2.destructive and vm2.kdump.layout == "rhel" and vm2.ssh.port == 2222
    assert len(inv.digest) == 64


INVENTORY_ERRORS = [
    # (description, replace old -> new in GOOD_INVENTORY, line, field fragment, message fragment)
    ("unknown arch", ("arch: x86_64", "arch: sparc"), 16, "hosts[1].arch", "not one of"),
    ("inline password", ("password: {file: bmc-password}", "password: hunter2"), 4, "password", "inline passwords"),
    ("port out of range", ("port: 2222", "port: 70000"), 18, "hosts[1].ssh.port", "out of range"),
    ("port not a number", ("port: 2222", "port: twenty"), 18, "hosts[1].ssh.port", "integer"),
    ("unknown feature", ("features: [hwpoison_inject", "features: [telepathy"), 12, "hosts[0].features", "unknown feature"),
    ("unknown host field", ("    kdump: {layout: rhel}", "    kdumpp: {layout: rhel}"), 19, "hosts[1].kdumpp", "unknown field"),
    ("bad kdump layout", ("layout: rhel", "layout: suse"), 19, "hosts[1].kdump.layout", "not one of"),
    ("missing address", ("ssh: {address: 10.1.2.3, port: 22}", "ssh: {port: 22}"), 13, "hosts[0].ssh.address", "required"),
    ("group lists unknown host", ("hosts: [srv1]", "hosts: [srv1, ghost]"), 5, "groups", "unknown host"),
    ("destructive not a bool", ("destructive: true", "destructive: yes-please"), 7, "destructive", "true or false"),
    ("duplicate key", ("    arch: x86_64\n", "    arch: x86_64\n    arch: aarch64\n"), 17, None, "duplicate key"),
    ("missing key file", ("key_file: id_key", "key_file: nope"), 3, "ssh.key_file", "does not exist"),
    ("bad yaml", ("  - name: vm2", "  - name: [vm2"), None, None, "invalid YAML"),
    ("bad host name", ("name: vm2", "name: 'vm 2'"), 15, "hosts[1].name", "not a valid host name"),
    ("unknown semantics", ("    kdump: {layout: rhel}", "    kdump: {layout: rhel}\n    semantics: v10"), 20,
     "hosts[1].semantics", "'v10' is not one of: v10-like, v4-like, legacy"),
    ("semantics in a group", ("platform: ampere-altra}", "platform: ampere-altra, semantics: v5}"), 7,
     "semantics", "is not one of"),
    ("no pinned host key", ("ssh: {address: 127.0.0.1, port: 2222, host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample\"}",
                            "ssh: {address: 127.0.0.1, port: 2222, known_hosts: null}"), 18, "known_hosts", "no pinned host key"),
]


@pytest.mark.parametrize("desc, change, line, field, message", INVENTORY_ERRORS, ids=[e[0] for e in INVENTORY_ERRORS])
def test_malformed_inventory_names_file_line_field(files, desc, change, line, field, message) -> None:
    text = GOOD_INVENTORY.replace(*change)
    assert text != GOOD_INVENTORY, "the test's replacement did not apply"
    path = write(files, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    err = info.value
    assert err.path == str(path)
    assert message in str(err)
    if line is not None:
        assert err.line == line, str(err)
    else:
        assert err.line is not None, "a YAML syntax error must still name a line"
    if field is not None:
        assert field in (err.field or ""), str(err)


GOOD_PLAYBOOK = """\
version: 1
name: t
defaults:
  deadlines: {panic: 30}
cases:
  - name: a
    injector: hwpoison_inject
    target: kernel-rodata
    sysctls: {vm.panic_on_unrecoverable_memory_failure: 1}
    expect: {outcome: panic, action: {label: reserved kernel page, result: Ignored}, signature: new}
  - name: b
    injector: hard_offline_page
    target: {pfn: "0x1234"}
    expect: {outcome: survive}
    limit: {arches: [x86_64], features: [hard_offline_page]}
"""

PLAYBOOK_ERRORS = [
    ("unknown injector", ("injector: hwpoison_inject", "injector: laser"), 7, "cases[0].injector", "not one of"),
    ("unknown page class", ("target: kernel-rodata", "target: kernel-bss"), 8, "cases[0].target", "unknown page class"),
    ("bad pfn", ('{pfn: "0x1234"}', '{pfn: "12zz"}'), 13, "cases[1].target.pfn", "not a number"),
    ("bad outcome", ("outcome: survive", "outcome: maybe"), 14, "cases[1].expect.outcome", "not one of"),
    ("bad action result", ("result: Ignored", "result: Shrugged"), 10, "cases[0].expect.action.result", "not one of"),
    ("negative deadline", ("{panic: 30}", "{panic: -1}"), 4, "deadlines.panic", "positive"),
    ("unknown deadline", ("{panic: 30}", "{lunch: 30}"), 4, "deadlines.lunch", "unknown field"),
    ("bad sysctl name", ("vm.panic_on_unrecoverable_memory_failure: 1", "panic: 1"), 9, "sysctls.panic", "not a sysctl"),
    ("survive with signature", ("expect: {outcome: survive}", "expect: {outcome: survive, signature: new}"), 14,
     "signature", "no signature"),
    ("unknown arch limit", ("arches: [x86_64]", "arches: [mips]"), 15, "limit.arches", "unknown arch"),
    ("duplicate case", ("name: b", "name: a"), 11, "cases[1].name", "duplicate case"),
]


@pytest.mark.parametrize("desc, change, line, field, message", PLAYBOOK_ERRORS, ids=[e[0] for e in PLAYBOOK_ERRORS])
def test_malformed_playbook_names_file_line_field(tmp_path, desc, change, line, field, message) -> None:
    text = GOOD_PLAYBOOK.replace(*change)
    assert text != GOOD_PLAYBOOK
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_playbook(path)
    assert info.value.path == str(path) and message in str(info.value)
    assert info.value.line == line, str(info.value)
    assert field in (info.value.field or ""), str(info.value)


def test_good_playbook(tmp_path) -> None:
    pb = load_playbook(write(tmp_path, "pb.yaml", GOOD_PLAYBOOK))
    a, b = pb.cases
    assert a.deadlines["panic"] == 30 and a.deadlines["dump"] == DEFAULT_DEADLINES["dump"]
    assert a.sysctls == (("vm.panic_on_unrecoverable_memory_failure", "1"),) and a.expect.dump is True
    assert b.target == "pfn" and b.pfn == 0x1234 and b.expect.dump is False and b.limits.arches == ("x86_64",)


@pytest.mark.parametrize("name", ["smoke.yaml", "nightly.yaml"])
def test_shipped_playbooks_load(name) -> None:
    pb = load_playbook(REPO / "playbooks" / name)
    assert pb.cases


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    path = write(tmp_path, "bad.yaml", GOOD_PLAYBOOK.replace("injector: hwpoison_inject", "injector: laser"))
    code = main(["run", "-i", str(path), str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err and f"{path}:7" in err


def test_cli_inventory_check_without_probe(files, capsys) -> None:
    code = main(["inventory", "check", "--no-probe", str(write(files, "inv.yaml", GOOD_INVENTORY))])
    out = capsys.readouterr().out
    assert code == 0 and "srv1" in out and "vm2" in out
    assert "will inject into: srv1\n" in out and "never injected (no 'destructive: true'): vm2" in out


def test_destructive_in_the_global_defaults_is_refused(files, capsys) -> None:
    text = GOOD_INVENTORY.replace("defaults:\n  ssh:", "defaults:\n  destructive: true\n  ssh:")
    assert main(["inventory", "check", "--no-probe", str(write(files, "inv.yaml", text))]) == 2
    err = capsys.readouterr().err.strip()
    assert "inv.yaml:3: defaults.destructive: destructive is allowed only on a host or a group" in err


def test_semantics_named_on_a_group_or_host(files) -> None:
    text = GOOD_INVENTORY.replace("platform: ampere-altra}", "platform: ampere-altra, semantics: v4-like}")
    inventory = load_inventory(write(files, "inv.yaml", text))
    assert (inventory.host("srv1").semantics, inventory.host("vm2").semantics) == ("v4-like", None)


def test_cli_bad_semantics_is_file_line_and_exit_2(files, capsys) -> None:
    text = GOOD_INVENTORY.replace("    kdump: {layout: rhel}", "    kdump: {layout: rhel}\n    semantics: v10")
    assert main(["inventory", "check", "--no-probe", str(write(files, "inv.yaml", text))]) == 2
    err = capsys.readouterr().err.strip()
    assert "inv.yaml:20: hosts[1].semantics:" in err and "v10-like, v4-like, legacy" in err


def test_state_dir_is_an_absolute_plain_path(files) -> None:
    inventory = load_inventory(write(files, "inv.yaml", GOOD_INVENTORY.replace(
        "    kdump: {layout: rhel}", "    kdump: {layout: rhel}\n    state_dir: /srv/orch/")))
    assert inventory.host("vm2").state_dir == "/srv/orch"
    assert inventory.host("srv1").state_dir == "/var/lib/memfail-orchestrator"
    for bad in ("relative/dir", "/tmp/x'; reboot"):
        with pytest.raises(ConfigError, match="state_dir"):
            load_inventory(write(files, "inv.yaml", GOOD_INVENTORY.replace(
                "    kdump: {layout: rhel}", f"    kdump: {{layout: rhel}}\n    state_dir: \"{bad}\"")))


PLAYBOOK_RUNTIME_TRAPS = [
    ("nan deadline", ("{panic: 30}", "{panic: .nan}"), 4, "deadlines.panic", "positive"),
    ("bad sysctl in limits", ("arches: [x86_64]", "sysctls_present: ['vm.x; reboot']"), 15,
     "limit.sysctls_present", "not a sysctl"),
    ("matrix with explicit pfn", ("expect: {outcome: survive}", "expect: {outcome: matrix}"), 13,
     "cases[1].target", "explicit pfn"),
    ("dump from an unloaded kdump", ("signature: new}", "signature: new, dump: true}\n    kdump: unload"), 10,
     "cases[0].expect.dump", "no crash kernel"),
]


@pytest.mark.parametrize("desc, change, line, field, message", PLAYBOOK_RUNTIME_TRAPS,
                         ids=[e[0] for e in PLAYBOOK_RUNTIME_TRAPS])
def test_playbook_errors_that_would_only_show_at_run_time_are_caught_at_load(tmp_path, desc, change, line, field,
                                                                             message) -> None:
    text = GOOD_PLAYBOOK.replace(*change)
    assert text != GOOD_PLAYBOOK
    with pytest.raises(ConfigError) as info:
        load_playbook(write(tmp_path, "bad.yaml", text))
    assert message in str(info.value) and info.value.line == line, str(info.value)
    assert field in (info.value.field or ""), str(info.value)


def test_unloaded_kdump_case_expects_no_dump_by_default(tmp_path) -> None:
    text = GOOD_PLAYBOOK.replace("signature: new}", "signature: new}\n    kdump: unload")
    case = load_playbook(write(tmp_path, "pb.yaml", text)).cases[0]
    assert case.kdump == "unload" and case.expect.dump is False


def test_inventory_host_name_that_is_a_list_is_bad_input(files) -> None:
    text = GOOD_INVENTORY.replace("name: vm2", "name: [vm, 2]")
    with pytest.raises(ConfigError) as info:
        load_inventory(write(files, "inv.yaml", text))
    assert info.value.line == 15 and "must be a string" in str(info.value)


def test_inventory_garbled_host_key_is_bad_input(files) -> None:
    text = GOOD_INVENTORY.replace('host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"',
                                  'host_key: "ssh-ed25519 not*base64!"')
    with pytest.raises(ConfigError) as info:
        load_inventory(write(files, "inv.yaml", text))
    assert info.value.line == 18 and "base64" in str(info.value)


def test_cli_unset_bmc_password_variable_is_bad_input(files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_BMC_PASSWORD", raising=False)
    inv = write(files, "inv.yaml", GOOD_INVENTORY.replace("password: {file: bmc-password}",
                                                          "password: {env: NO_SUCH_BMC_PASSWORD}"))
    code = main(["run", "-i", str(inv), "--hosts", "srv1", str(REPO / "playbooks/smoke.yaml"),
                 "--results", str(tmp_path / "r")])
    assert code == 2 and "NO_SUCH_BMC_PASSWORD" in capsys.readouterr().err


UNREADABLE_YAML = [
    # (description, bytes replacing "  - name: vm2\n" in GOOD_INVENTORY, line, message fragment)
    ("NUL byte", b"  - name: vm2\x00\n", 15, "U+0000"),
    ("invalid UTF-8", b"  - name: vm\xff\xfe2\n", 15, "not UTF-8"),
    ("tab-indented line", b"  - name: vm2\n\tarch: x86_64\n", 16, "tabs"),
    ("unclosed bracket", b"  - name: [vm2\n", 15, "starts at line 15"),
]


@pytest.mark.parametrize("desc, bad, line, message", UNREADABLE_YAML, ids=[e[0] for e in UNREADABLE_YAML])
def test_cli_unreadable_yaml_is_bad_input_not_an_internal_error(files, capsys, desc, bad, line, message) -> None:
    path = files / "inv.yaml"
    path.write_bytes(GOOD_INVENTORY.encode().replace(b"  - name: vm2\n", bad))
    code = main(["inventory", "check", "--no-probe", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and str(path) in err and message in err, err
    assert "Traceback" not in err and "Error:" not in err and "Error" not in err.split(str(path))[1], err
    if desc != "unclosed bracket":      # found only at the end of the file; the message names the start
        assert f"{path}:{line}:" in err, err


@pytest.mark.parametrize("text, line, message", [
    ("version: !!int one\n", 1, "'one' cannot be read as a YAML int"),
    ("version: 1\nhosts: [{destructive: !!bool maybe}]\n", 2, "'maybe' cannot be read as a YAML bool"),
    ("version: 1\nhosts: 2026-13-45\n", 2, "cannot be read as a YAML timestamp"),
    ("hosts: " + "[" * 5000 + "]" * 5000 + "\n", 1, "nested too deeply (more than 64 levels"),
])
def test_values_yaml_itself_cannot_read_are_bad_input(tmp_path, text, line, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_inventory(write(tmp_path, "inv.yaml", text))
    assert message in str(info.value) and info.value.line == line, str(info.value)


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty (or only comments)"),
    ("- a\n", "the file must be a mapping ('key: value' lines), got a list"),
    ("version: 1\nhosts: [3]\n", "each host must be a mapping, got the number 3"),
    ("version: 1\nhosts: {a: 1}\n", "hosts: must be a list, got a mapping"),
    ("version: 1\nhosts:\n  - name: [a]\n", "host name must be a string, got a list"),
])
def test_errors_describe_values_in_user_words(tmp_path, text, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_inventory(write(tmp_path, "inv.yaml", text))
    assert message in str(info.value)
    assert not any(word in str(info.value) for word in ("LocList", "LocDict", "NoneType", "int ", "str "))


@pytest.mark.parametrize("old, new, message", [
    ("port: 2222,", "port: 2222, keepalive: .nan,", "keepalive: must be positive seconds"),
    ("port: 2222,", "port: 2222, connect_timeout: .inf,", "connect_timeout: must be positive seconds"),
    ("key_file: id_key", "key_file: '~no-such-user-here/k'", "not a usable file name"),
    ("password: {file: bmc-password}", 'password: {file: "a\\0b"}', "not a usable file name"),
])
def test_values_python_cannot_use_are_bad_input(files, old, new, message) -> None:
    text = GOOD_INVENTORY.replace(old, new)
    assert text != GOOD_INVENTORY
    with pytest.raises(ConfigError) as info:
        load_inventory(write(files, "inv.yaml", text))
    assert message in str(info.value)


def test_merge_keys_may_be_overridden_but_a_key_written_twice_may_not(files) -> None:
    text = GOOD_INVENTORY.replace("  ssh: {user: root,", "  ssh: &ssh {user: root,").replace(
        "ssh: {address: 10.1.2.3, port: 22}", "ssh: {<<: *ssh, address: 10.1.2.3, user: admin}")
    assert load_inventory(write(files, "inv.yaml", text)).host("srv1").ssh.user == "admin"
    with pytest.raises(ConfigError) as info:
        load_inventory(write(files, "inv.yaml", text.replace("user: admin}", "user: admin, user: root}")))
    assert info.value.line == 13 and "duplicate key 'user' (first at line 13)" in str(info.value)


@pytest.mark.parametrize("text, line, message", [
    ("a: &a [x, x]\n" + "".join(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}' if n > 1 else '*a'] * 10)}]\n"
                                for n in range(1, 9)) + "hosts: *a8\n", 5, "more than 100000 values"),
    ("m: &m {x: 1}\n" + "".join(f"m{n}: &m{n} {{<<: [{', '.join([f'*m{n - 1}' if n > 1 else '*m'] * 10)}]}}\n"
                                for n in range(1, 9)) + "hosts: *m8\n", 5, "more than 100000 values"),
    ("hosts: &h [*h]\n", 1, "inside the value of its own anchor"),
    ("hosts:\n" + "".join("  " * d + "-\n" for d in range(1, 100)), 65, "nested too deeply"),
])
def test_yaml_bombs_and_deep_nesting_are_refused_before_they_are_built(tmp_path, text, line, message) -> None:
    path = write(tmp_path, "inv.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert message in str(info.value) and info.value.line == line, str(info.value)


def test_a_file_too_large_to_be_an_inventory_is_refused_unread(tmp_path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# padding\n" * 300_000)
    with pytest.raises(ConfigError, match="larger than 2 MiB"):
        load_inventory(path)


def test_unknown_field_suggests_the_field_meant(files) -> None:
    with pytest.raises(ConfigError, match="did you mean 'platform'"):
        load_inventory(write(files, "inv.yaml", GOOD_INVENTORY.replace("platform: qemu", "platfrom: qemu")))


def test_cli_playbook_check_lists_cases_and_touches_no_host(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")        # one row per case, nothing wrapped
    code = main(["playbook", "check", str(write(tmp_path, "pb.yaml", GOOD_PLAYBOOK.replace("name: t", "name: '[/]t'")))])
    out = capsys.readouterr().out
    assert code == 0 and ": [/]t (2" in out      # the name as written, not read as markup
    assert "hwpoison_inject" in out and "kernel-rodata" in out and "pfn 0x1234" in out
    assert "panic, new signature" in out and "survive" in out and "arch x86_64" in out


def test_cli_playbook_check_bad_input_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    path = write(tmp_path, "pb.yaml", GOOD_PLAYBOOK.replace("target: kernel-rodata", "target: kernel-bss"))
    assert main(["playbook", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"orchestrator: error: {path}:8: cases[0].target: unknown page class 'kernel-bss' " \
                  f"(known: {', '.join(PAGE_CLASSES)}, or {{pfn: N}})\n"
