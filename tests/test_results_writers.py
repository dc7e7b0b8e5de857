"""The results writers: run.json round trip, JUnit outcome mapping, HTML grid and escaping,
atomic writes, load_run errors and the ``report`` command end to end."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from html import escape

import pytest

from orchestrator.errors import ConfigError
from orchestrator.faces.cli.report import add_report_command
from orchestrator.results import store
from orchestrator.results.html import report_html
from orchestrator.results.junit import junit_xml
from orchestrator.results.model import (SCHEMA_VERSION, CaseResult, Evidence, HostFacts,
                                        PhaseTiming, RunResult)
from orchestrator.results.runjson import run_from_dict, run_to_dict

HOSTILE = '<script>alert("x")</script>&'


def make_case(host: str, case: str, verdict: str, *reasons: str, **extra) -> CaseResult:
    fields = dict(
        expect={"panic": verdict != "skip", "signature": "Memory failure: 0x%x: unrecoverable page"},
        pfn=0x1234a, page_class="lru", injector="hwpoison_inject",
        timings=(PhaseTiming("armed", 0.0, 1.5, 0.2), PhaseTiming("injected", 1.5, 0.4, 0.4),
                 PhaseTiming("panicked", 1.9, 60.0, 58.0, note="kdump kernel booting"),
                 PhaseTiming("rebooted", 61.9, 45.2, 45.0)),
        evidence=(Evidence("console", "Kernel panic - not syncing: Memory failure: 0x1234a: "
                           "unrecoverable page", 0.031),
                  Evidence("dump-dmesg", "x" * 300, 0.032), Evidence("ssh", "boot_id changed")),
        panic_after_inject_s=0.031,
        dump={"id": "202601011200", "incomplete": False, "files": {"dump.202601011200": 52_428_800},
              "vmcoreinfo": {"OSRELEASE": "7.3.0-1-cloud-amd64", "PAGESIZE": "4096",
                             "CRASHTIME": "1767268800"}},
        boot_id_before="aaaa", boot_id_after="bbbb", started_at="2026-01-01T12:00:00+00:00",
        seconds=107.1, artifacts={"console.log": f"{host}/{case}/console.log",
                                  "metadata.json": f"{host}/{case}/metadata.json"})
    fields.update(extra)
    return CaseResult(host=host, case=case, verdict=verdict, reasons=tuple(reasons), **fields)


def make_host(name: str, **extra) -> HostFacts:
    return HostFacts(host=name, arch="x86_64", platform="qemu-x86_64", kernel_release="7.3.0-1-cloud-amd64",
                     boot_id="aaaa", sysctls={"vm.panic_on_unrecoverable_memory_failure": "1"},
                     semantics="panic-on-unrecoverable", semantics_evidence=("sysctl present",),
                     features=("hwpoison_inject", "kdump"), **extra)


def make_run(cases: tuple[CaseResult, ...] | None = None) -> RunResult:
    if cases is None:
        cases = (make_case("srv1", "lru-page", "pass", "panicked as expected"),
                 make_case("srv1", "slab-page", "fail", "no panic within 120 s", "host kept running"),
                 make_case("srv2", "lru-page", "error", "BMC unreachable", recovery=("power cycle",)),
                 make_case("srv2", "slab-page", "error", "SSH never came back"),
                 make_case("srv2", HOSTILE, "skip", "feature mce_inject missing"))
    return RunResult(run_id="20260101T120000Z-abc123", started_at="2026-01-01T12:00:00+00:00",
                     finished_at="2026-01-01T12:09:30+00:00", inventory_path="inventories/lab.yaml",
                     inventory_digest="sha256:" + "1" * 64, playbook_path="playbooks/basic.yaml",
                     playbook_digest="sha256:" + "2" * 64, hosts=(make_host("srv1"), make_host("srv2")),
                     cases=cases, controller={"version": "0.1.0", "python": "3.11"})


# --- run.json -------------------------------------------------------------------------

def test_run_json_round_trip_is_exact_through_json_text():
    run = make_run()
    text = json.dumps(run_to_dict(run))
    assert run_from_dict(json.loads(text)) == run
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION


def test_run_from_dict_rejects_unknown_keys_and_verdicts():
    data = run_to_dict(make_run())
    data["cases"][0]["verdict"] = "maybe"
    with pytest.raises(ValueError, match=r"cases\[0\]\.verdict"):
        run_from_dict(data)
    data = run_to_dict(make_run())
    data["hosts"][1]["colour"] = "blue"
    with pytest.raises(ValueError, match=r"hosts\[1\].*colour"):
        run_from_dict(data)


# --- junit.xml ------------------------------------------------------------------------

def test_junit_keeps_failure_and_error_apart_with_right_counts():
    root = ET.fromstring(junit_xml(make_run()))
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "2", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"srv1", "srv2"}
    srv2 = suites["srv2"]
    assert (srv2.get("failures"), srv2.get("errors"), srv2.get("skipped")) == ("0", "2", "1")
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    failed = cases[("srv1", "slab-page")]
    assert failed.find("error") is None
    assert failed.find("failure").get("message") == "no panic within 120 s"
    assert "host kept running" in failed.find("failure").text
    assert "Memory failure: 0x1234a" in failed.find("failure").text
    errored = cases[("srv2", "lru-page")]
    assert errored.find("failure") is None and errored.find("error").get("message") == "BMC unreachable"
    assert cases[("srv2", HOSTILE)].find("skipped") is not None
    passed = cases[("srv1", "lru-page")]
    assert [child.tag for child in passed] == ["system-out"]
    assert passed.get("time") == "107.100"


def test_junit_properties_and_control_characters():
    case = make_case("srv1", "lru-page", "fail", "panic\x1b[31m missing\x00",
                     evidence=(Evidence("console", "\x07bell"),))
    root = ET.fromstring(junit_xml(make_run((case,))))   # would raise on raw \x00 / \x1b
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["kernel_release"] == "7.3.0-1-cloud-amd64"
    assert props["inventory_digest"] == "sha256:" + "1" * 64
    assert props["playbook_digest"] == "sha256:" + "2" * 64
    failure = root.find(".//failure")
    assert failure.get("message") == "panic\\x1b[31m missing\\x00"
    assert "\\x07bell" in failure.text
    assert root.find("testsuite").get("timestamp") == "2026-01-01T12:00:00"


# --- report.html ----------------------------------------------------------------------

def test_html_grid_has_one_cell_per_host_and_case_with_its_verdict_class():
    page = report_html(make_run())
    expected = {("srv1", "lru-page"): "v-pass", ("srv1", "slab-page"): "v-fail",
                ("srv2", "lru-page"): "v-error", ("srv2", "slab-page"): "v-error",
                ("srv1", HOSTILE): "v-none"}
    for (host, case), css in expected.items():
        assert f'class="cell {css}" data-host="{host}" data-case="{escape(case)}"' in page, (host, case)


def test_html_escapes_hostile_strings_everywhere():
    nasty = make_case(HOSTILE, HOSTILE, "fail", HOSTILE, evidence=(Evidence(HOSTILE, HOSTILE, 1.0),),
                      artifacts={HOSTILE: "javascript:alert(1)"})
    page = report_html(make_run((nasty,)))
    assert "<script>" not in page
    assert 'href="javascript:' not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page


def test_html_shows_timeline_evidence_dump_and_artifacts():
    page = report_html(make_run())
    assert page.count('class="tl-bar"') == 4 * 5
    assert "kdump kernel booting" in page and "+0.031 s" in page
    assert "7.3.0-1-cloud-amd64" in page and "2026-01-01 12:00:00 UTC" in page and "50.0 MiB" in page
    assert 'href="srv1/lru-page/console.log"' in page
    incomplete = make_case("srv1", "c", "fail", "dump incomplete",
                           dump={"incomplete": True, "notes": ["makedumpfile <failed>", "retry"]})
    page = report_html(make_run((incomplete,)))
    assert "INCOMPLETE" in page and "makedumpfile &lt;failed&gt;<br>retry" in page


def test_overall_line_never_calls_all_skipped_or_empty_a_success():
    skipped = make_run((make_case("srv1", "c", "skip", "feature missing"),))
    assert "no case ran to a verdict" in report_html(skipped)
    empty = make_run(())
    assert "no case ran to a verdict" in report_html(empty)
    suites = ET.fromstring(junit_xml(empty)).findall("testsuite")
    assert [(s.get("name"), s.get("tests")) for s in suites] == [("srv1", "0"), ("srv2", "0")]
    assert "the lab failed in 2 case(s)" in report_html(make_run(make_run().cases[2:4]))


# --- store ----------------------------------------------------------------------------

def test_new_run_dir_and_case_dir_names(tmp_path):
    run_id, run_dir = store.new_run_dir(tmp_path, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert run_id.startswith("20260102T030405Z-") and len(run_id.split("-")[1]) == 6
    assert run_dir == tmp_path / run_id and run_dir.is_dir()
    assert store.new_run_dir(tmp_path, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))[0] != run_id
    sneaky = store.case_dir(run_dir, "../etc", "a/b c")
    assert sneaky.is_dir() and sneaky.parent.parent == run_dir
    assert sneaky.name == "a_b_c"


def test_write_atomic_never_leaves_a_half_file_or_temp(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    store.write_atomic(target, "old content")
    real_fsync = os.fsync

    def crash_after_writing(fd):     # data is in the temp file, the rename has not happened
        raise OSError("disk gone")
    monkeypatch.setattr(store.os, "fsync", crash_after_writing)
    with pytest.raises(store.ResultsWriteError, match="disk gone"):
        store.write_atomic(target, "new content " * 10_000)
    monkeypatch.setattr(store.os, "fsync", real_fsync)
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    store.write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_full_results_disk_is_a_results_write_error_naming_the_file_and_the_old_file_stays(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "run.json"
    store.write_atomic(target, "old content")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.handle = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):      # part of it lands, then the disk is full
            self.handle.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fdopen", FullDisk)
    with pytest.raises(store.ResultsWriteError) as caught:
        store.write_atomic(target, "new content " * 10_000)
    assert str(caught.value) == f"cannot write {target}: No space left on device"
    assert caught.value.blame == "lab" and not caught.value.retryable
    assert target.read_text() == "old content" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_write_run_then_load_run(tmp_path):
    run = make_run()
    paths = store.write_run(tmp_path, run)
    assert {p.name for p in paths.values()} == {"run.json", "junit.xml", "report.html"}
    assert store.load_run(tmp_path) == run


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({**run_to_dict(make_run()), "schema_version": SCHEMA_VERSION + 1}), "schema_version"),
    (json.dumps({"schema_version": SCHEMA_VERSION, "run_id": "x"}), "missing key"),
    ("[]", "schema_version"),
])
def test_load_run_bad_file_is_a_config_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        store.load_run(tmp_path)
    assert str(tmp_path / "run.json") in str(caught.value)


# --- report command -------------------------------------------------------------------

def _report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator")
    add_report_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_report_command_rerenders_from_run_json(tmp_path, capsys):
    run = make_run(make_run().cases + (make_case("srv1", "[bold]odd", "pass"),))
    store.write_run(tmp_path, run)
    (tmp_path / "report.html").unlink()
    (tmp_path / "junit.xml").write_text("stale")
    before = (tmp_path / "run.json").read_bytes()
    assert _report(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "report.html") in out
    assert "2 pass, 1 fail, 2 error, 1 skip" in out
    assert "[bold]odd" in out            # names are printed as text, not as rich markup
    assert (tmp_path / "report.html").read_text() == report_html(run)
    assert ET.parse(tmp_path / "junit.xml").getroot().get("errors") == "2"
    assert (tmp_path / "run.json").read_bytes() == before


def test_report_command_missing_or_bad_run_json_exits_2(tmp_path, capsys):
    assert _report(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "run.json" in err and "\n" not in err
    (tmp_path / "run.json").write_text('{"schema_version": 99}')
    assert _report(["report", str(tmp_path)]) == 2
    assert "schema_version 99" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


# --- exit statuses, blame and hosts left armed --------------------------------------------

@pytest.mark.parametrize("verdicts, left_armed, status", [
    (("pass", "skip"), False, 0),
    (("pass", "fail", "error"), False, 1),          # a kernel failure is the news
    (("pass", "error"), False, 3),
    (("pass", "pass"), True, 3),                    # all passed, but a host still carries the sysctls
    (("skip", "skip"), False, 4),                   # nothing reached a verdict: never green
    ((), False, 4),
])
def test_exit_status_of_a_run(verdicts, left_armed, status):
    cases = tuple(make_case("srv1", f"c{i}", v, left_armed=left_armed and i == 0) for i, v in enumerate(verdicts))
    assert make_run(cases).exit_code() == status


def test_blame_and_left_armed_reach_every_report(tmp_path):
    run = make_run((make_case("srv1", "c1", "error", "no new dump after the panic", blame="kdump", left_armed=True),))
    assert run_from_dict(json.loads(json.dumps(run_to_dict(run)))) == run
    html = report_html(run)
    assert "kdump:</span> no new dump" in html and "LEFT ARMED: srv1" in html
    junit = junit_xml(run)
    assert 'message="kdump: no new dump after the panic"' in junit and "LEFT ARMED" in junit


def test_an_old_run_json_without_blame_still_loads():
    data = run_to_dict(make_run())
    for case in data["cases"]:
        del case["blame"], case["left_armed"]
    assert run_from_dict(data) == make_run()


# --- the run folder as units: request + one result.json per finished case ----------------

def test_case_results_round_trip_through_their_own_files(tmp_path):
    run = make_run()
    for case in run.cases:
        store.write_case_result(tmp_path, case)
    assert sorted(store.load_case_results(tmp_path), key=lambda c: (c.host, c.case)) == \
        sorted(run.cases, key=lambda c: (c.host, c.case))
    store.write_request(tmp_path, {"run_id": run.run_id, "cases": ["a", "b"]})
    assert store.read_request(tmp_path)["cases"] == ["a", "b"]


def test_a_broken_case_record_is_bad_input_naming_its_file(tmp_path):
    path = store.write_case_result(tmp_path, make_case("srv1", "c1", "pass"))
    path.write_text('{"verdict": "pass"}')
    with pytest.raises(ConfigError, match="result.json.*missing key"):
        store.load_case_results(tmp_path)


def test_the_reports_of_a_run_render_each_finished_case_once_and_read_the_same(monkeypatch):
    from orchestrator.results import html

    rendered, real = [], html._section
    monkeypatch.setattr(html, "_section", lambda case, anchor: rendered.append(anchor) or real(case, anchor))
    run, sections = make_run(), html.new_sections()
    first = report_html(run, sections)
    assert sorted(rendered) == sorted(html.section_ids(run)) and len(set(rendered)) == len(run.cases)
    again = report_html(run, sections)                  # the next periodic report: nothing new
    assert again == first and len(rendered) == len(run.cases)
    assert report_html(run) == first                    # the same page as without the cache


def test_a_case_finishing_before_others_in_the_plan_does_not_render_them_again(monkeypatch):
    """Cases finish in any order and each report lists them in the plan's: a case moves down
    the list as earlier ones finish, and must keep its rendered section all the same."""
    from orchestrator.results import html

    rendered, real = [], html._section
    monkeypatch.setattr(html, "_section", lambda case, anchor: rendered.append(anchor) or real(case, anchor))
    run, sections = make_run(), html.new_sections()
    for finished in range(len(run.cases), 0, -1):       # the plan's last case first
        page = report_html(dataclasses.replace(run, cases=run.cases[finished - 1:]), sections)
    assert len(rendered) == len(run.cases)
    assert page == report_html(run)


def test_every_case_has_its_own_section_id_and_the_grid_links_to_it():
    from orchestrator.results import html

    lookalikes = (make_case("a b", "c", "pass"), make_case("a_20_b", "c", "pass"), make_case("a", "b~c", "pass"),
                  make_case("a~b", "c", "pass"), make_case("a b", "c", "fail"), make_case(HOSTILE, HOSTILE, "pass"))
    run = make_run(lookalikes)
    ids = html.section_ids(run)
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9._~-]+", anchor) for anchor in ids)
    page = report_html(run)
    for anchor in ids:
        assert page.count(f'id="{anchor}"') == 1 and page.count(f'href="#{anchor}"') == 1


def test_run_json_made_from_kept_case_parts_is_the_same_text_as_one_dump(tmp_path):
    import dataclasses

    from orchestrator.results.runjson import new_case_texts, run_json, run_to_dict

    run, parts = make_run(), new_case_texts()
    for shown in (dataclasses.replace(run, cases=()), run, run):         # none yet, then twice the same
        assert run_json(shown, parts) == json.dumps(run_to_dict(shown), indent=2)
    store.write_run(tmp_path, run)
    assert store.load_run(tmp_path) == run
