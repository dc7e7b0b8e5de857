"""One kernel log line as text: cleaned, and split into its timestamp and its body.

Accepted line prefixes: ``<3>`` syslog levels, ``[   93.655960]`` monotonic stamps,
``[Wed Nov 25 17:37:22 2026]`` (dmesg -T), journalctl short / short-iso headers, and
``[T439]`` / ``[C1]`` caller ids (CONFIG_PRINTK_CALLER). What the body means is
signatures.py's part.
"""

from __future__ import annotations

import calendar
import re
import time

from orchestrator.protocols.console import clean_console_text

_MONO_STAMP = re.compile(r"\[\s*\d+\.\d+\]")


def clean_line(raw: str) -> str:
    """Strip escapes, control characters and any shell prompt before the kernel stamp."""
    # A tab becomes a space so that body patterns see one kind of blank.
    raw = clean_console_text(raw).replace("\t", " ")
    line = raw.rstrip()
    if line[:1] not in ("[", "<", ""):
        stamp = _MONO_STAMP.search(line)
        # A journal header ("host kernel: [ 1.2]") is kept; a prompt ("/ # ") is dropped.
        if stamp and stamp.start() and "kernel:" not in line[: stamp.start()]:
            line = line[stamp.start():]
    return line


# --- prefixes and timestamps ------------------------------------------------------------

_PREFIX = re.compile(r"""
    (?:<\d{1,3}>)?
    (?: (?P<iso>\d{4}-\d\d-\d\d[T\ ]\d\d:\d\d:\d\d(?:[.,]\d+)?)\S*\s+\S+\s+kernel:\s?
      | (?P<bsd>[A-Z][a-z]{2}\s{1,2}\d{1,2}\s\d\d:\d\d:\d\d)\s+\S+\s+kernel:\s? )?
    (?:<\d{1,3}>)?
    (?: \[\s*(?P<mono>\d+\.\d+)\](?:\s+\S+\s+kernel:)?
      | \[(?P<wall>[A-Z][a-z]{2}\s[A-Z][a-z]{2}\s[\s\d]\d\s\d\d:\d\d:\d\d\s\d{4})\] )?
    \s*(?:\[\s*[TC]\d+\]\s?)?\s*
""", re.X)


def _wall_seconds(stamp: str, fmt: str) -> float | None:
    """Seconds since the epoch (UTC assumed: only differences inside one log matter)."""
    fraction = 0.0
    if "." in stamp or "," in stamp:
        stamp, frac = re.split(r"[.,]", stamp, maxsplit=1)
        fraction = float("0." + frac)
    try:
        return calendar.timegm(time.strptime(stamp.replace("T", " "), fmt)) + fraction
    except ValueError:
        return None


_PLAIN_PREFIX = re.compile(r"\[\s*(\d+\.\d+)\]\s*(?:\[\s*[TC]\d+\]\s?)?\s*")


def split_prefix(line: str) -> tuple[float | None, str]:
    """(timestamp, body) of a cleaned line."""
    if line.startswith("[") and (plain := _PLAIN_PREFIX.match(line)):  # dmesg / console: the common case
        return float(plain[1]), line[plain.end():]
    m = _PREFIX.match(line)
    body = line[m.end():]
    if m["mono"]:
        return float(m["mono"]), body
    if m["wall"]:
        return _wall_seconds(" ".join(m["wall"].split()), "%a %b %d %H:%M:%S %Y"), body
    if m["iso"]:
        return _wall_seconds(m["iso"], "%Y-%m-%d %H:%M:%S"), body
    if m["bsd"]:
        # syslog stamps have no year: a leap year keeps "Feb 29" valid
        return _wall_seconds("2000 " + " ".join(m["bsd"].split()), "%Y %b %d %H:%M:%S"), body
    return None, body
