"""Inventory YAML -> frozen ``Inventory``. Format: docs/DESIGN.md ("Inventory format")."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from pathlib import Path

import paramiko

from orchestrator.config.model import (ARCHES, KDUMP_LAYOUTS, KERNEL_SEMANTICS, BmcConfig, Host, Inventory, KdumpConfig,
                                       SecretRef, SshConfig)
from orchestrator.config.yamlsrc import Fields, LocDict, UniqueNames, deep_merge, describe, load_located
from orchestrator.errors import ConfigError

KNOWN_FEATURES = frozenset({
    "hwpoison_inject", "hard_offline_page", "einj", "mce_inject", "kdump", "sol", "nmi",
    "qemu_mce",         # the virtual lab's BMC raises x86 machine checks (lab machines only)
    "sol_break",    # SOL sends a serial BREAK and the kernel takes SysRq keys after it
    "ghes",     # the platform's firmware reports memory errors through GHES (arm64 RAS)
    "sel",   # the BMC keeps a System Event Log the orchestrator reads around each case
})
#: Machine-check injectors exist on x86 only: another arch declaring one is a typo to catch
#: at load time, not a case that fails at 3 a.m.
X86_ONLY_FEATURES = frozenset({"mce_inject", "qemu_mce"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOST_FIELDS = {"name", "arch", "platform", "features", "destructive", "ssh", "bmc", "kdump", "state_dir",
                "semantics"}



def load_inventory(path: Path | str) -> Inventory:
    path = Path(path)
    data, raw = load_located(path)
    top = Fields(data, path, "")
    top.reject_unknown({"version", "defaults", "groups", "hosts"})
    version = top.get("version", int, 1)
    if version != 1:
        raise top.error("version", f"unsupported inventory version {version} (this orchestrator reads version 1)")
    defaults = top.get("defaults", dict, LocDict())
    _check_host_keys(Fields(defaults, path, "defaults"), allow_name=False)
    if "destructive" in defaults:
        raise top.sub("defaults").error("destructive", "destructive is allowed only on a host or a group, never in "
                                                       "the global defaults (it would opt in every host ever added)")
    membership = _group_membership(top, path)
    hosts, names = [], UniqueNames(path, "host")
    for where, line, entry in top.mappings("hosts", "host"):
        name = entry.get("name")
        if not isinstance(name, str):
            what = "every host needs a name" if name is None else f"host name must be a string, got {describe(name)}"
            raise ConfigError(what, path=str(path), line=line, field=f"{where}.name")
        groups = membership.get(name, [])
        merged = defaults
        for group_name, group_defaults in groups:
            merged = deep_merge(merged, group_defaults)
        merged = deep_merge(merged, entry)
        host = _build_host(Fields(merged, path, where, line), tuple(g for g, _ in groups))
        names.add(host.name, line=line, field=f"{where}.name")
        hosts.append(host)
    for name in membership:
        if name not in names:
            raise ConfigError(f"group lists unknown host {name!r}: add it under hosts or remove it from the group",
                              path=str(path), line=top.line_of("groups"), field="groups")
    return Inventory(path=path, hosts=tuple(hosts), digest=hashlib.sha256(raw).hexdigest())


def _group_membership(top: Fields, path: Path) -> dict[str, list[tuple[str, dict]]]:
    groups = top.sub("groups", None)
    membership: dict[str, list[tuple[str, dict]]] = {}
    if groups is None:
        return membership
    for group_name in groups.data:
        if not isinstance(group_name, str):
            raise groups.error(group_name, f"group name must be a string, got {describe(group_name)}")
        group = groups.sub(group_name)
        group.reject_unknown({"defaults", "hosts"})
        gdefaults = group.get("defaults", dict, LocDict())
        _check_host_keys(Fields(gdefaults, path, f"{group.where}.defaults"), allow_name=False)
        for host_name in group.str_list("hosts"):
            membership.setdefault(host_name, []).append((str(group_name), gdefaults))
    return membership


def _check_host_keys(f: Fields, *, allow_name: bool) -> None:
    f.reject_unknown(_HOST_FIELDS if allow_name else _HOST_FIELDS - {"name"})


def _build_host(f: Fields, groups: tuple[str, ...]) -> Host:
    _check_host_keys(f, allow_name=True)
    name = f.get("name", str)
    if not _NAME_RE.match(name):
        raise f.error("name", f"{name!r} is not a valid host name (letters, digits, '.', '_', '-')")
    features = f.str_list("features")
    for feature in features:
        if feature not in KNOWN_FEATURES:
            raise f.error("features", f"unknown feature {feature!r} (known: {', '.join(sorted(KNOWN_FEATURES))})")
    arch = f.get("arch", str, choices=ARCHES)
    for feature in X86_ONLY_FEATURES.intersection(features):
        if arch != "x86_64":
            raise f.error("features", f"feature {feature!r} is x86_64 only (machine checks); host {name} is {arch}")
    kdump = f.sub("kdump", None)
    if kdump is not None:
        kdump.reject_unknown({"layout", "path"})
    return Host(
        name=name,
        arch=arch,
        platform=f.get("platform", str, "unknown"),
        features=frozenset(features),
        destructive=f.get("destructive", bool, False),
        ssh=_build_ssh(f.sub("ssh")),
        bmc=_build_bmc(f.sub("bmc", None)),
        kdump=KdumpConfig(layout=kdump.get("layout", str, "auto", choices=KDUMP_LAYOUTS) if kdump else "auto",
                          path=kdump.get("path", str, "/var/crash") if kdump else "/var/crash"),
        groups=groups,
        origin=f"{f.path}:{f.line}",
        state_dir=_state_dir(f),
        semantics=f.get("semantics", str, None, choices=KERNEL_SEMANTICS),
    )


def _state_dir(f: Fields) -> str:
    state_dir = f.get("state_dir", str, Host.state_dir)
    if not state_dir.startswith("/") or any(c in state_dir for c in "'\"\n$`\\") or state_dir.rstrip("/") == "":
        raise f.error("state_dir", f"{state_dir!r} must be an absolute folder path without quotes or shell characters")
    return state_dir.rstrip("/")


def _existing_file(f: Fields, key: str, what: str) -> Path | None:
    """The file ``key`` names (relative to the inventory's folder); it must exist."""
    value = f.get(key, str, None)
    if value is None:
        return None
    try:
        file = Path(value).expanduser()
        file = file if file.is_absolute() else (f.path.parent / file).resolve()
        exists = file.is_file()
    except (RuntimeError, ValueError, OSError):     # "~nosuchuser/...", a NUL in the name
        raise f.error(key, f"{value!r} is not a usable file name") from None
    if not exists:
        # relative names are the usual slip: say where this one was looked for
        raise f.error(key, f"{what} {file} does not exist or is not a file (a relative path is relative to "
                           "the inventory's folder)")
    return file


def _build_ssh(f: Fields) -> SshConfig:
    f.reject_unknown({"address", "port", "user", "key_file", "key_passphrase", "known_hosts", "host_key",
                      "connect_timeout", "banner_timeout", "keepalive", "command_timeout"})
    key_file = _existing_file(f, "key_file", "key file")
    key_passphrase = _key_passphrase(f)
    if key_passphrase is not None and key_file is None:
        raise f.error("key_passphrase", "a passphrase without key_file: give the encrypted key's file")
    known_hosts = _existing_file(f, "known_hosts", "known_hosts file")
    host_key = f.get("host_key", str, None)
    if host_key is None and known_hosts is None:
        raise f.error("known_hosts", "no pinned host key: give known_hosts (a file) or host_key")
    if host_key is not None and not _valid_host_key(host_key):
        raise f.error("host_key", "expected '<type> <base64 key>' as in a known_hosts line, e.g. the output of "
                                  "'ssh-keyscan -t ed25519 HOST' without the host name")
    return SshConfig(
        address=f.get("address", str), port=f.port("port", 22), user=f.get("user", str, "root"),
        key_file=key_file, key_passphrase=key_passphrase, known_hosts=known_hosts, host_key=host_key,
        connect_timeout=_positive(f, "connect_timeout", 10.0), keepalive=int(_positive(f, "keepalive", 5.0)),
        banner_timeout=_positive(f, "banner_timeout", 10.0),
        command_timeout=_positive(f, "command_timeout", 60.0),
    )


def _key_passphrase(f: Fields) -> SecretRef | None:
    """The key's passphrase by reference, as the BMC password: an inline value would sit in
    a file that is copied, diffed and recorded (its digest) with every run."""
    if f.data.get("key_passphrase") is None:
        return None
    return _secret_ref(f, "key_passphrase", "passphrase", "{env: LAB_SSH_KEY_PASSPHRASE}")


def _secret_ref(f: Fields, key: str, what: str, example: str) -> SecretRef:
    """A secret by reference, ``{env: VAR}`` or ``{file: PATH}``; inline text is refused."""
    if isinstance(f.data.get(key), str):
        raise f.error(key, f"inline {what}s are refused: use {{env: VAR}} or {{file: PATH}}")
    ref = f.sub(key)
    ref.reject_unknown({"env", "file"})
    env = ref.get("env", str, None)
    if (env is None) == (ref.get("file", str, None) is None):
        raise f.error(key, f"give exactly one of env or file, e.g. {example}")
    return SecretRef(env=env, file=_existing_file(ref, "file", f"{what} file"), origin=f"{f.path}:{f.line_of(key)}")


def _valid_host_key(text: str) -> bool:
    parts = text.split()
    if len(parts) < 2:
        return False
    try:
        paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1], validate=True))
    except (binascii.Error, ValueError, paramiko.SSHException, paramiko.UnknownKeyType, TypeError):
        return False
    return True


def _positive(f: Fields, key: str, default: float) -> float:
    value = f.get(key, float, default)
    if not math.isfinite(value) or value <= 0:
        raise f.error(key, f"must be positive seconds, got {value}")
    return value


def _build_bmc(f: Fields | None) -> BmcConfig | None:
    if f is None:
        return None
    f.reject_unknown({"address", "port", "user", "password", "min_command_interval"})
    secret = _secret_ref(f, "password", "password", "{env: LAB_BMC_PASSWORD}")
    return BmcConfig(address=f.get("address", str), port=f.port("port", 623), user=f.get("user", str),
                     password=secret, min_command_interval=f.get("min_command_interval", float, 0.0))
