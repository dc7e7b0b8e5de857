"""Bad input, generated: thousands of malformed inventories and playbooks through the CLI's own
``check`` commands, in process. Whatever the file holds, the answer is exit status 2 with one
line on stderr naming the file (and the line, when the problem has one), in words a person
wrote the file in: never a traceback, never a Python or parser type name, never slow. A
mutation that happens to stay valid must exit 0 and really load.

Derandomized, so every run (and CI) tries the same inputs; the seeds are the valid files
shipped with the project and tests/test_config.py's."""

from __future__ import annotations

import contextlib
import gc
import io
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_config
from orchestrator.config.inventory import load_inventory
from orchestrator.config.playbook import load_playbook
from orchestrator.faces.cli.main import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = 1000
MAX_SECONDS = 0.1

#: Words that would mean the user is reading this program's insides, not a message for them.
INTERNALS = re.compile(r"Traceback|LocList|LocDict|NoneType|ScannerError|ReaderError|ParserError|ComposerError|"
                       r"ConstructorError|KeyError|TypeError|AttributeError|ValueError|IndexError|RecursionError|"
                       r"UnicodeDecodeError|OverflowError|internal error|<class |object at 0x|Error:")
#: The only problems that belong to the whole file rather than to one of its lines.
LINELESS = ("the file is empty", "nested too deeply", "larger than")

SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


# --- the valid files every mutation starts from ------------------------------------------------

def _seed_texts(kind: str) -> list[str]:
    if kind == "inventory":
        return [test_config.GOOD_INVENTORY, (REPO / "inventories/example-rack.yaml").read_text()]
    return [test_config.GOOD_PLAYBOOK] + [p.read_text() for p in sorted((REPO / "playbooks").glob("*.yaml"))]


SEEDS = {kind: _seed_texts(kind) for kind in ("inventory", "playbook")}


# --- how a file goes wrong ---------------------------------------------------------------------

WORDS = st.sampled_from(["name", "hosts", "cases", "ssh", "bmc", "port", "arch", "x86_64", "expect", "panic",
                         "outcome", "target", "pfn", "limit", "deadlines", "version", "defaults", "groups",
                         "kdump", "sysctls", "password", "env", "file", "zz", "é", "名", "", "[/]", "[bold]x",
                         "~nobody-here/k", "/dev/zero", ".", "..", "/", "0x1g", "1_000", "<<"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), WORDS,
    st.text(max_size=30), st.just(10**4000), st.just(-1), st.just(0), st.just(65536),
    st.text(alphabet="ab-_.", min_size=5000, max_size=20000),
    st.binary(max_size=20), st.dates(), st.just(float("inf")),
)
JUNK_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(WORDS, st.integers(), st.booleans()), inner, max_size=4)),
    max_leaves=12)


def _paths(value, prefix=()) -> list[tuple]:
    """Every place in a parsed document: a tuple of keys and indexes from the root."""
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _paths(child, prefix + (i,))
    return out


def _mutate_tree(doc, place: tuple, op: str, junk, word: str):
    if not place:
        return junk if op != "wrap" else [doc]
    parent = doc
    for step in place[:-1]:
        parent = parent[step]
    last = place[-1]
    if op == "delete":
        del parent[last]
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif op == "unknown key" and isinstance(parent[last], dict):
        parent[last][word + "_typo"] = junk
    elif op == "rename" and isinstance(parent, dict):
        parent[f"{last}{word}"] = parent.pop(last)
    else:
        parent[last] = junk
    return doc


@st.composite
def tree_mutations(draw, kind: str) -> bytes:
    """Wrong types, missing fields, unknown keys, huge values: the parsed seed, changed, dumped."""
    doc = yaml.safe_load(draw(st.sampled_from(SEEDS[kind])))
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(doc, (dict, list)):
            break
        place = draw(st.sampled_from(_paths(doc)))
        op = draw(st.sampled_from(["replace", "replace", "delete", "unknown key", "rename", "wrap"]))
        doc = _mutate_tree(doc, place, op, draw(JUNK_VALUES), draw(WORDS))
    flow = draw(st.sampled_from([False, None, True]))
    return yaml.safe_dump(doc, default_flow_style=flow, sort_keys=False, allow_unicode=draw(st.booleans()),
                          width=draw(st.sampled_from([80, 10**6]))).encode()


BAD_BYTES = st.sampled_from([b"\x00", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\t", b"\r",
                             b"\x1b[31m", b"\x7f", b"\xe2\x80\xa8", b"&", b"*", b"!", b"|", b">", b"%", b"@",
                             b"{", b"[", b"]", b"}", b":", b"- ", b"? ", b"'", b'"', b"#", b"---\n", b"...\n",
                             b"<<: ", b"!!binary ", b"!!python/object:os.system ", b"\\", b"!!int ", b"!!float ",
                             b"!!bool ", b"!!timestamp ", b"!!set ", b"!!omap ", b"!!pairs ", b"!!null ", b"!!map ",
                             b"!!seq ", b"!!str ", b"!<tag:yaml.org,2002:int> ", b"!local ", b"%YAML 1.1\n",
                             b"%TAG ! tag:x,2000:\n", b"&a ", b"*a", b"*nowhere "])


TAGS = st.sampled_from(["!!int", "!!float", "!!bool", "!!timestamp", "!!binary", "!!set", "!!omap", "!!pairs",
                        "!!null", "!!str", "!!map", "!!seq", "!!merge", "!!value", "!!python/object:os.system",
                        "!!python/name:os.system", "!local", "!<tag:yaml.org,2002:int>", "!<!>", "!!"])
VALUE_TOKENS = st.one_of(st.sampled_from([
    "2026-13-45", "2026-02-30T25:61:00", "0x", "0o9", "0b2", "1e999", "-.inf", ".nan", "~", "null", "&a x", "*a",
    "*nowhere", "|", ">", "[", "{", "]", "}", "'unterminated", '"\\x"', '"\\uZZZZ"', "@x", "`x", "? x", "- x",
    "<<: x", "=", "1_000", "0x1_0", "+12", "1:30:00", "yes", "no", "on", "off", "Y", "'", '""', "'[/]'", ":", "#",
    "!!int abc", "!!float x", "!!bool maybe", "!!binary ***", "!!timestamp 2026-99-99", "!!set [a]", "!!omap {a: 1}",
    "!!pairs [1]", "!!null x", "!!int 99999999999999999999999999", "!!float 1e99999"]),
    st.integers(1, 6000).map(lambda n: "9" * n), st.text(max_size=12).map(repr))


@st.composite
def text_mutations(draw, kind: str) -> bytes:
    """The seed's bytes changed, inserted or cut; its lines cut, duplicated (duplicate keys),
    swapped or re-indented; the file truncated."""
    data = bytearray(draw(st.sampled_from(SEEDS[kind])).encode())
    for _ in range(draw(st.integers(1, 4))):
        lines = data.split(b"\n")
        op = draw(st.sampled_from(["byte", "insert", "cut bytes", "cut line", "dup line", "swap", "indent",
                                   "truncate", "tag", "value", "value"]))
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.one_of(BAD_BYTES, st.binary(min_size=1, max_size=8)))
        elif op == "cut bytes":
            del data[at:at + draw(st.integers(1, 40))]
        elif op == "truncate":
            del data[at:]
        else:
            if op == "cut line":
                del lines[i]
            elif op == "dup line":
                lines.insert(i, lines[i])
            elif op == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            elif op in ("tag", "value") and b": " in lines[i]:
                # a value's own spot: after its key, where a tag or a strange scalar is read
                key, _, value = lines[i].partition(b": ")
                new = draw(TAGS).encode() + b" " + value if op == "tag" else draw(VALUE_TOKENS).encode()
                lines[i] = key + b": " + new
            elif op == "indent":
                lines[i] = b" " * draw(st.integers(1, 5)) + lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def _top_keys(kind: str) -> list[str]:
    return ["hosts", "defaults", "groups", "version"] if kind == "inventory" else ["cases", "defaults", "name"]


@st.composite
def bombs(draw, kind: str) -> bytes:
    """Billion laughs (sequences, mappings, merge keys), a value containing itself, deep nesting."""
    key = draw(st.sampled_from(_top_keys(kind)))
    width, levels = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    style = draw(st.sampled_from(["list", "map", "merge", "self", "deep flow", "deep block"]))
    if style in ("list", "map", "merge"):
        lines = ['x0: &x0 ["lol", "lol"]' if style == "list" else "x0: &x0 {lol: lol}"]
        for n in range(1, levels + 1):
            if style == "list":
                body = "[" + ", ".join([f"*x{n - 1}"] * width) + "]"
            elif style == "map":
                body = "{" + ", ".join(f"k{k}: *x{n - 1}" for k in range(width)) + "}"
            else:
                body = "{<<: [" + ", ".join([f"*x{n - 1}"] * width) + f"], own{n}: 1}}"
            lines.append(f"x{n}: &x{n} {body}")
        return ("\n".join(lines) + f"\n{key}: *x{levels}\n").encode()
    if style == "self":
        return draw(st.sampled_from([f"{key}: &a [*a]\n", f"{key}: &a {{x: *a}}\n",
                                     f"{key}: &a\n  - name: *a\n"])).encode()
    depth = draw(st.integers(10, 3000))
    if style == "deep flow":
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        return f"{key}: {opener * depth}1{closer * depth}\n".encode()
    depth = min(depth, 400)
    return (f"{key}:\n" + "".join(" " * (2 * d) + "- \n" if d < depth - 1 else " " * (2 * d) + "- 1\n"
                                  for d in range(1, depth))).encode()


JUNK_FILES = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(alphabet=":-[]{}&*!|>'\"#%@`,? \n\tabc01", max_size=200).map(str.encode),
    st.just(b""), st.just(b"\n\n# only a comment\n"), st.just(b"---\n...\n---\n"), st.just(b"\xef\xbb\xbf"),
)


def bad_files(kind: str) -> st.SearchStrategy[bytes]:
    return st.one_of(tree_mutations(kind), text_mutations(kind), bombs(kind), JUNK_FILES)


# --- the check ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The companion files the seeds name (keys, known_hosts, a password file), beside the file."""
    work = tmp_path_factory.mktemp("bad-input") / "lab [" / "] files"     # shown too: "[/]" is no style
    work.mkdir(parents=True)
    (work / "id_key").write_text("not a real key\n")
    (work / "known_hosts").write_text("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample\n")
    (work / "bmc-password").write_text("secret\n")
    shutil.copytree(REPO / "inventories/example-keys", work / "example-keys")
    return work


COMMANDS = {"inventory": (["inventory", "check", "--no-probe"], load_inventory),
            "playbook": (["playbook", "check"], load_playbook)}


def _yaml_lines(data: bytes) -> int:
    """Lines as YAML counts them: a lone CR, NEL and U+2028/2029 end a line too."""
    return len(re.findall("\r\n|[\r\n\x85\u2028\u2029]", data.decode("utf-8", "replace"))) + 1


def check_one(kind: str, path: Path, data: bytes) -> float:
    """Run the command on ``data``; assert the answer is a user's; return the seconds it took."""
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    argv, loader = COMMANDS[kind]
    # CPU time, not wall time: CI's two cores are shared with other jobs (load averages of 10
    # are common), and that waiting is no work of the loader's. The collector is off while
    # timed: its passes over pytest's and Hypothesis's heap are no work of the loader's either
    # (the command alone has a heap a thousand times smaller); it runs again right after.
    gc.disable()
    try:
        started = time.process_time()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*argv, str(path)])
        seconds = time.process_time() - started
    finally:
        gc.enable()
    err_text = err.getvalue()
    if code == 0:
        assert err_text == "" and loader(path), err_text
        return seconds
    assert code == 2, err_text
    assert err_text.count("\n") == 1 and err_text.endswith("\n"), err_text
    match = re.match(rf"orchestrator: error: {re.escape(str(path))}(?::(\d+))?: (.*)\n\Z", err_text)
    assert match, f"does not name the file first: {err_text!r}"
    line, message = match.groups()
    if line is None:
        assert any(words in message for words in LINELESS), f"names no line: {err_text!r}"
    else:
        assert 1 <= int(line) <= _yaml_lines(data), err_text
    # the file's own words may be quoted back (a key named "KeyError" is the user's)
    assert all(word.encode() in data for word in INTERNALS.findall(message)), err_text
    return seconds


@pytest.mark.parametrize("kind", ["inventory", "playbook"])
def test_every_malformed_file_gets_one_line_naming_file_and_line(kind, workdir) -> None:
    path = workdir / f"{kind}.yaml"
    for seed in SEEDS[kind]:                 # the seeds themselves are valid, and warm every import
        check_one(kind, path, seed.encode())
    timings: list[tuple[float, bytes]] = []

    @SETTINGS
    @given(data=bad_files(kind))
    def check(data: bytes) -> None:
        timings.append((check_one(kind, path, data), data))

    check()
    assert len(timings) >= EXAMPLES
    seconds, slowest = max(timings, key=lambda t: t[0])
    assert seconds <= MAX_SECONDS, f"{seconds:.3f} s for {slowest[:300]!r}"
