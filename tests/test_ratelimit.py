"""Rejected frames are logged once per peer per interval, with a count."""

from __future__ import annotations

import logging

import pytest

from kvcluster.errors import ProtocolError
from kvcluster.runtime.ratelimit import RejectionLog, peer_name


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_flood_from_one_peer_is_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    rejections = RejectionLog(logging.getLogger("test"), "server1", interval=10.0)
    now = 100.0
    for i in range(12_000):  # 12,000 frames over 30 s
        now = 100.0 + i * 0.0025
        rejections.reject(now, "0x00deadbeef", ProtocolError(f"malformed frame {i}"))
        rejections.flush(now)
    rejections.flush(130.0)  # the event loop flushes every pass: this one ends the last window
    out = lines(caplog)
    assert out[0] == "server1 rejected a malformed frame from 0x00deadbeef: malformed frame 0"
    assert 3 <= len(out) <= 5, out
    counts = [int(line.split(" rejected ")[1].split()[0].replace(",", "")) for line in out[1:]]
    assert sum(counts) == 11_999, out
    assert out[1].startswith("server1 rejected 4,000 more malformed frames from 0x00deadbeef in the last 10 s")
    assert out[-1].endswith("(the last: malformed frame 11999)")


def test_peers_are_counted_apart_and_a_quiet_peer_is_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    rejections = RejectionLog(logging.getLogger("test"), "master1", interval=10.0)
    for peer in ("a", "b", "a", "a", "b"):
        rejections.reject(0.0, peer, ProtocolError("bad"))
    rejections.flush(5.0)
    assert len(lines(caplog)) == 2  # the first of each peer, at once
    rejections.flush(10.0)
    assert lines(caplog)[2:] == [
        "master1 rejected 2 more malformed frames from a in the last 10 s (the last: bad)",
        "master1 rejected 1 more malformed frame from b in the last 10 s (the last: bad)",
    ]
    rejections.flush(20.0)  # nothing more from either: both forgotten, without a line
    assert len(lines(caplog)) == 4
    assert rejections.windows == {}
    rejections.reject(21.0, "a", ProtocolError("again"))
    assert lines(caplog)[-1] == "master1 rejected a malformed frame from a: again"


def test_peer_names() -> None:
    assert peer_name(b"node-3-4242") == "node-3-4242"
    assert peer_name(b"\x00k\x8bEg") == "0x006b8b4567"
    assert peer_name(b"") == "0x"
