"""The lab BMC's fault knob for drills: ``bmc.reply_delay`` in the machine folder holds every
packet back by that many seconds, switchable while the BMC runs; absent means no delay."""

from __future__ import annotations

import threading
import time

import pyghmi.ipmi.private.session as ipmisession

from orchestrator.vlab.bmc import fault_knobs


def test_reply_delay_is_read_from_the_machine_folder_and_switchable_at_run_time(tmp_path, monkeypatch):
    sent, arrived = [], threading.Event()

    def record(sock, packet, sockaddr):
        sent.append((time.monotonic(), packet))
        arrived.set()

    monkeypatch.setattr(ipmisession, "_io_sendto", record)
    monkeypatch.setattr(fault_knobs, "RECHECK_S", 0.0)
    fault_knobs.install_reply_delay(tmp_path)
    ipmisession._io_sendto(None, b"now", ("127.0.0.1", 1))            # no file: at once
    assert [p for _, p in sent] == [b"now"]
    (tmp_path / fault_knobs.REPLY_DELAY_FILE).write_text("0.3\n")
    started = time.monotonic()
    ipmisession._io_sendto(None, bytearray(b"late"), ("127.0.0.1", 1))
    assert len(sent) == 1, "held back, not sent in the caller's thread"
    arrived.clear()
    assert arrived.wait(2.0) and sent[-1][1] == b"late" and sent[-1][0] - started >= 0.29
    (tmp_path / fault_knobs.REPLY_DELAY_FILE).unlink()
    ipmisession._io_sendto(None, b"again", ("127.0.0.1", 1))
    assert sent[-1][1] == b"again"


def test_a_garbled_knob_means_no_delay(tmp_path):
    (tmp_path / fault_knobs.REPLY_DELAY_FILE).write_text("slow\n")
    assert fault_knobs.ReplyDelay(tmp_path).seconds() == 0.0
