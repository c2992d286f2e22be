"""Rejected frames in the log: the first from a peer at once, then one line per peer per interval with a count.

A peer that sends junk without pause (a port scanner, a program speaking
another protocol, a fuzzer) would otherwise add one log line per frame: a
flood of them fills the disk and buries everything else the process says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

REPORT_INTERVAL = 10.0  # seconds between two lines about the same peer


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0  # rejected since ``start``, not yet reported
    last_error: str = ""


class RejectionLog:
    """Counts the frames ``who`` rejects per peer and logs them, at most one line per peer per interval.

    ``reject`` logs a peer's first rejection at once, with its reason, and
    counts the ones that follow; ``flush``, called every pass of the event
    loop, reports each count once its interval is over and forgets peers that
    have gone quiet, so their next rejection is logged at once again.
    """

    def __init__(self, log: logging.Logger, who: str, interval: float = REPORT_INTERVAL) -> None:
        self.log = log
        self.who = who
        self.interval = interval
        self.windows: dict[str, _Window] = {}

    def reject(self, now: float, peer: str, error: Exception) -> None:
        window = self.windows.get(peer)
        if window is None:
            self.windows[peer] = _Window(now)
            self.log.warning("%s rejected a malformed frame from %s: %s", self.who, peer, error)
            return
        window.count += 1
        window.last_error = str(error)

    def flush(self, now: float) -> None:
        for peer, window in list(self.windows.items()):
            if now - window.start < self.interval:
                continue
            if window.count == 0:
                del self.windows[peer]
                continue
            self.log.warning(
                "%s rejected %s more malformed %s from %s in the last %.0f s (the last: %s)",
                self.who,
                f"{window.count:,}",
                "frame" if window.count == 1 else "frames",
                peer,
                now - window.start,
                window.last_error,
            )
            window.start, window.count = now, 0


def peer_name(routing_id: bytes) -> str:
    """A ROUTER socket's routing id for a person: as text when it is printable (a node's), else in hex."""
    text = routing_id.decode("ascii", "replace")
    return text if text.isprintable() and text.isascii() and text else "0x" + routing_id.hex()
