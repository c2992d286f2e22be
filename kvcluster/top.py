"""``kvcluster top``: every node's load, latency, holdings and backlog, asked of the nodes themselves.

One frame: send ``STATS_REQUEST`` to every node (endpoints from the state
directory and the last table seen), ask every master for its role and the
leader's report meanwhile, and collect the nodes' ``STATS`` until one
deadline. A node that has not answered by then shows as not answering (or
dead, when its process is gone or the master declared it so). Only a node
first learnt of from the table (``--master`` alone, or a node restarted on a
new port) is asked after the masters answer, and gets a whole ``timeout`` of
its own: a frame never waits longer than twice ``timeout``. The sockets are kept from frame to frame
and answers carry the frame's request id, so a late answer is never taken for
a newer one.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from kvcluster.core.placement import RoutingTable, node_name
from kvcluster.core.protocol import NodeStats, StatsRequest, decode, encode
from kvcluster.core.wire import RaftReport
from kvcluster.errors import ClusterNotRunning, KvclusterError, ProtocolError

if TYPE_CHECKING:
    from rich.console import Group

    from kvcluster.state import ClusterState

REFRESH = 0.5  # seconds between frames of the live view
TOP_EVENTS = 10  # events under the nodes
PIPED_WIDTH = 150  # columns of a frame written to a pipe or a file


@dataclass
class NodeProbe:
    """A DEALER per node endpoint, kept across frames; each frame's answers are matched by its request id."""

    ctx: zmq.Context[zmq.Socket[bytes]] = field(default_factory=zmq.Context)
    sockets: dict[str, zmq.Socket[bytes]] = field(default_factory=dict)
    request_id: int = 0
    known: dict[int, str] = field(default_factory=dict)  # node endpoints of the last table seen

    def new_frame(self) -> int:
        self.request_id += 1
        return self.request_id

    def ask(self, endpoint: str) -> None:
        sock = self.sockets.get(endpoint)
        if sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndhwm = 16  # a dead node's queue stays short; a full one refuses at once
            sock.connect(endpoint)
            self.sockets[endpoint] = sock
        with contextlib.suppress(zmq.Again):
            sock.send(encode(StatsRequest(self.request_id)), zmq.NOBLOCK)

    def collect(self, endpoints: dict[int, str], until: float) -> dict[int, NodeStats]:
        """The answers to this frame from ``endpoints`` (node id -> endpoint) that arrive by ``until``."""
        poller = zmq.Poller()
        wanted = {self.sockets[e]: n for n, e in endpoints.items() if e in self.sockets}
        for sock in wanted:
            poller.register(sock, zmq.POLLIN)
        found: dict[int, NodeStats] = {}
        while len(found) < len(wanted) and (remaining := until - time.monotonic()) > 0:
            for sock, _ in poller.poll(int(remaining * 1000) + 1):
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        answer = decode(frame)
                    except ProtocolError:
                        continue
                    if isinstance(answer, NodeStats) and answer.request_id == self.request_id:
                        found[wanted[sock]] = answer
        return found

    def forget(self, keep: set[str]) -> None:
        """Close the sockets of endpoints no node has any more (a restarted node binds a new port)."""
        for endpoint in set(self.sockets) - keep:
            self.sockets.pop(endpoint).close(linger=0)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@dataclass
class Source:
    """Where a frame comes from: the state directory (``--home``) if a cluster is recorded there, and the masters."""

    home: Path
    master: str | None

    def state(self) -> ClusterState | None:
        from kvcluster.state import ClusterState  # noqa: PLC0415

        try:
            return ClusterState.load(self.home)
        except ClusterNotRunning:
            if self.master is None:
                raise
            return None


def top_document(source: Source, probe: NodeProbe, timeout: float) -> dict[str, Any]:
    """One frame as JSON-ready data: the masters, every node's counters (or why there are none), the events."""
    from kvcluster.addresses import parse_addresses  # noqa: PLC0415
    from kvcluster.leader_link import roll_call  # noqa: PLC0415
    from kvcluster.status_view import describe  # noqa: PLC0415

    state = source.state()
    until = time.monotonic() + timeout
    probe.new_frame()
    recorded = {i: s.endpoint for i, s in enumerate(state.servers, start=1) if s.endpoint} if state else {}
    endpoints = probe.known | recorded
    for endpoint in endpoints.values():
        probe.ask(endpoint)
    master_endpoints = parse_addresses(source.master) if source.master else state.master_endpoints() if state else []
    found, report = roll_call(master_endpoints, max(0.01, until - time.monotonic()))
    received = time.time()  # the events' ages count back from the leader's answer
    table = RoutingTable(report.table) if report is not None and report.table is not None else None
    if table is not None:
        probe.known = dict(table.data.endpoints)
        for node_id, endpoint in table.data.endpoints.items():
            if endpoints.get(node_id) != endpoint:  # not recorded here, or restarted on a new port
                endpoints[node_id] = endpoint
                probe.ask(endpoint)
                until = max(until, time.monotonic() + timeout)  # asked late: it gets a whole timeout too
    answers = probe.collect(endpoints, until)
    probe.forget(set(endpoints.values()))
    infos = dict(enumerate(state.servers, start=1)) if state else {}
    nodes = []
    for node_id in sorted(endpoints.keys() | infos.keys()):
        info = infos.get(node_id)
        process_alive = info.alive() if info is not None else None
        declared_dead = table.is_dead(node_id) if table is not None else False
        doc = _node_document(node_id, endpoints.get(node_id, ""), answers.get(node_id), process_alive, declared_dead)
        nodes.append({"pid": info.pid if info is not None else None} | doc)
    if state is not None and source.master is None:
        names = [m.name for m in state.masters]
    else:
        names = [f"master{i}" for i in range(1, len(found) + 1)]
    masters = [
        {"name": name, "role": role, "term": term, "endpoint": endpoint}
        for name, (role, term), endpoint in zip(names, found, master_endpoints, strict=True)
    ]
    leader = next((m for m in masters if m["role"] == "leader"), None)
    events = report.events if report is not None else []
    return {
        "time": datetime.fromtimestamp(received).astimezone().isoformat(timespec="milliseconds"),
        "timeout_s": timeout,
        "leader": leader["name"] if leader else None,
        "term": leader["term"] if leader else None,
        "table_version": table.version if table is not None else None,
        "dead": [node_name(n) for n in table.data.dead] if table is not None else [],
        "masters": masters,
        "raft": _raft_document(report.raft, names) if report is not None and report.raft is not None else None,
        "nodes": nodes,
        "events": [
            {
                "time": datetime.fromtimestamp(received - e.age_s).astimezone().isoformat(timespec="milliseconds"),
                "kind": e.kind.value,
                "node": node_name(e.node_id) if e.node_id else None,
                "text": describe(e),
            }
            for e in events
        ],
    }


def _raft_document(raft: RaftReport, names: list[str]) -> dict[str, Any]:
    """The group's log at its leader: the commit index and, per member, what it holds and how far it lags."""
    return {
        "commit_index": raft.commit_index,
        "last_applied": raft.last_applied,
        "members": [
            {
                "name": names[m.member_id - 1] if m.member_id <= len(names) else f"master{m.member_id}",
                "match_index": m.match_index,
                "lag": m.lag,
                "connected": m.connected,
            }
            for m in raft.members
        ],
    }


def _node_document(
    node_id: int, endpoint: str, stats: NodeStats | None, process_alive: bool | None, declared_dead: bool
) -> dict[str, Any]:
    if stats is not None:
        state = "declared dead" if declared_dead else "alive"
    elif process_alive is False or declared_dead:
        state = "dead"
    else:
        state = "not answering"
    doc: dict[str, Any] = {
        "name": node_name(node_id),
        "id": node_id,
        "endpoint": endpoint,
        "state": state,
        "answered": stats is not None,
        "process_alive": process_alive,
        "declared_dead": declared_dead,
    }
    if stats is None:
        return doc
    window = stats.window_s
    return doc | {
        "pid": stats.pid,
        "uptime_s": round(stats.uptime_s, 1),
        "window_s": round(window, 3),
        "gets_per_s": round(stats.gets / window, 1),
        "puts_per_s": round(stats.puts / window, 1),
        "deletes_per_s": round(stats.deletes / window, 1),
        "p50_ms": round(stats.p50_ms, 3),
        "p99_ms": round(stats.p99_ms, 3),
        "replies": stats.replies,
        "total_gets": stats.total_gets,
        "total_puts": stats.total_puts,
        "total_deletes": stats.total_deletes,
        "keys": stats.keys,
        "primary_slots": stats.primary_slots,
        "backup_slots": stats.backup_slots,
        "table_version": stats.table_version,
        "pending_writes": stats.pending_writes,
        "oldest_pending_ms": round(stats.oldest_pending_ms, 3),
        "fsync": stats.fsync_policy or None,
        "fsync_p99_ms": round(stats.fsync_p99_ms, 3) if stats.fsync_p99_ms >= 0 else None,
        "cpu_percent": round(stats.cpu_percent, 1),
        "rss_bytes": stats.rss_bytes,
    }


# --- the view ---

COLUMNS = (
    ("node", "left"),
    ("state", "left"),
    ("get/s", "right"),
    ("put/s", "right"),
    ("del/s", "right"),
    ("p50 ms", "right"),
    ("p99 ms", "right"),
    ("keys", "right"),
    ("pri", "right"),
    ("bak", "right"),
    ("pending", "right"),
    ("oldest ms", "right"),
    ("fsync p99", "right"),
    ("cpu %", "right"),
    ("rss MB", "right"),
)


def top_view(doc: dict[str, Any], events: int = TOP_EVENTS) -> Group:
    """The masters' line, a row per node, then the latest ``events`` events."""
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    clock = datetime.fromisoformat(doc["time"]).strftime("%H:%M:%S")
    masters = ", ".join(_master_label(m) for m in doc["masters"]) or "[red]no master known[/]"
    header = Text.from_markup(
        f"[bold]kvcluster top[/]  {clock}  table v{doc['table_version'] or '?'}  masters: {masters}" + _raft_line(doc)
    )
    table = Table(caption=_caption(doc), caption_justify="left", expand=False, padding=(0, 1))
    for name, justify in COLUMNS:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for node in doc["nodes"]:
        table.add_row(*_row(node))
    parts: list[Any] = [header, table]
    if doc["events"] and events:
        log = Table(title="events", title_justify="left", show_header=False, box=None, padding=(0, 2))
        log.add_column("time", no_wrap=True)
        log.add_column("event")
        for event in doc["events"][-events:]:
            log.add_row(datetime.fromisoformat(event["time"]).strftime("%H:%M:%S.%f")[:-3], event["text"])
        parts.append(log)
    return Group(*parts)


def _row(node: dict[str, Any]) -> list[str]:
    colour = {"alive": "green", "not answering": "yellow"}.get(node["state"], "red")
    state = f"[{colour}]{node['state']}[/]"
    if not node["answered"]:
        return [node["name"], state, *(["-"] * (len(COLUMNS) - 2))]
    fsync = "-" if node["fsync_p99_ms"] is None else f"{node['fsync_p99_ms']:.1f}"
    p50, p99 = (f"{node['p50_ms']:.2f}", f"{node['p99_ms']:.2f}") if node["replies"] else ("-", "-")
    return [
        node["name"],
        state,
        f"{node['gets_per_s']:,.0f}",
        f"{node['puts_per_s']:,.0f}",
        f"{node['deletes_per_s']:,.0f}",
        p50,
        p99,
        f"{node['keys']:,}",
        str(node["primary_slots"]),
        str(node["backup_slots"]),
        str(node["pending_writes"]),
        f"{node['oldest_pending_ms']:.1f}",
        fsync,
        f"{node['cpu_percent']:.0f}",
        f"{node['rss_bytes'] / 1e6:.0f}",
    ]


def _master_label(master: dict[str, Any]) -> str:
    if master["term"] is None:
        return f"{master['name']} [red]not answering[/]"
    colour = "green" if master["role"] == "leader" else "white"
    return f"{master['name']} [{colour}]{master['role']}[/] (term {master['term']})"


def _raft_line(doc: dict[str, Any]) -> str:
    """The group's line: leader, term, commit index and each member's lag in entries ("" for a lone master)."""
    raft = doc["raft"]
    if raft is None:
        return ""
    lags = ", ".join(
        f"{m['name']} {'' if m['connected'] else '[red]unreachable[/] '}lag {m['lag']}" for m in raft["members"]
    )
    return f"\nraft: leader {doc['leader']}, term {doc['term']}, commit index {raft['commit_index']}, {lags}"


def _caption(doc: dict[str, Any]) -> str:
    windows = [n["window_s"] for n in doc["nodes"] if n["answered"]]
    low, high = (round(min(windows)), round(max(windows))) if windows else (4, 5)
    span = f"the last {low} s" if low == high else f"the last {low}-{high} s"
    lines = [
        f"rates and latencies over {span}, measured at each node: a request's arrival to its reply leaving "
        "(writes: replication and logging included)",
        "pri, bak: slots held as primary and backup; pending: writes waiting for backups' acks, oldest ms: the "
        "oldest's wait; fsync p99 in ms",
    ]
    silent = [n["name"] for n in doc["nodes"] if n["state"] == "not answering"]
    if silent:
        lines.append(f"[yellow]no answer within {doc['timeout_s']:g} s from {', '.join(silent)}[/]")
    if doc["leader"] is None:
        lines.append("[red]no master is leading: the table cannot change[/]")
    return "\n".join(lines)


def run(source: Source, *, once: bool, as_json: bool, timeout: float) -> None:
    """Print one frame (``once``), one JSON document (``as_json``), or the live view until Ctrl-C."""
    probe = NodeProbe()
    try:
        if as_json:
            import json  # noqa: PLC0415

            sys.stdout.write(json.dumps(top_document(source, probe, timeout), indent=2) + "\n")
            return
        from rich.console import Console  # noqa: PLC0415

        # Piped or captured, a frame is as wide as its columns need, not the 80 columns rich assumes.
        console = Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
        if once:
            console.print(top_view(top_document(source, probe, timeout)))
            return
        _live(console, source, probe, timeout)
    finally:
        probe.close()


def _live(console: Any, source: Source, probe: NodeProbe, timeout: float) -> None:
    from rich.live import Live  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    with Live(console=console, screen=sys.stdout.isatty(), auto_refresh=False) as live:
        try:
            while True:
                started = time.monotonic()
                try:
                    view: Any = top_view(top_document(source, probe, timeout))
                except KvclusterError as exc:  # the cluster went down, or a master sent garbage: say so, keep trying
                    view = Text(f"kvcluster top  {datetime.now().strftime('%H:%M:%S')}  {exc}", style="red")
                live.update(view, refresh=True)
                time.sleep(max(0.0, started + REFRESH - time.monotonic()))
        except KeyboardInterrupt:
            pass
