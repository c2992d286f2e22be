"""What ``kvcluster status`` and the live view of ``kvcluster up`` show: the cluster as JSON-ready data and as tables.

The document joins the master's ``StatusReport`` with what the state
directory says about the processes, so it still says something when the
master does not answer. The master reports its recent events with ages (it
has its own clock); they are placed on this machine's clock here.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kvcluster.core.placement import RoutingTable, node_name
from kvcluster.core.wire import ClusterEvent, DiskReport, EventKind

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table

    from kvcluster.core.protocol import StatusReport
    from kvcluster.state import ClusterState

LIVE_EVENTS = 8  # events the live view of ``up`` shows under the nodes
STATUS_EVENTS = 12  # events ``kvcluster status`` shows; ``--json`` carries every one the master keeps


def status_document(state: ClusterState, timeout: float = 2.0) -> dict[str, Any]:
    """The cluster as JSON-ready data: the leading master's view where one answers, process liveness always."""

    masters, report = masters_document(state, timeout)
    table = RoutingTable(report.table) if report is not None and report.table is not None else None
    views = {n.node_id: n for n in report.nodes} if report is not None else {}
    nodes = []
    for node_id, info in enumerate(state.servers, start=1):
        view = views.get(node_id)
        primary, backup = table.slots_of(node_id) if table is not None else (0, 0)
        process_alive = info.alive()
        nodes.append({
            "name": info.name,
            "id": node_id,
            "pid": info.pid,
            "endpoint": info.endpoint,
            "alive": process_alive and (view is None or view.alive),
            "process_alive": process_alive,
            "declared_dead": table.is_dead(node_id) if table is not None else False,
            "primary_slots": primary,
            "backup_slots": backup,
            "keys": view.keys if view is not None else None,
            "disk": _disk_document(view.disk) if view is not None and view.disk is not None else None,
        })  # fmt: skip
    leader = next((m for m in masters if m["role"] == "leader"), None)
    return {
        "home": state.home,
        "curve": state.curve,
        "nodes_total": state.nodes,
        "rep": state.rep,
        "master": {
            "endpoint": state.master_endpoint,
            "pid": leader["pid"] if leader else None,
            "alive": report is not None,
            "leader": leader["name"] if leader else None,
            "term": leader["term"] if leader else None,
        },
        "masters": masters,
        "supervisor": {"pid": state.supervisor.pid, "alive": state.supervisor.alive()},
        **cluster_document(report, table),
        "nodes": nodes,
    }


def cluster_document(report: StatusReport | None, table: RoutingTable | None) -> dict[str, Any]:
    """What the acting master says of the whole cluster: table, deaths, repairs, drains and recent events."""
    from kvcluster.core.placement import under_replicated  # noqa: PLC0415

    return {
        "table_version": table.version if table is not None else None,
        "dead": [node_name(n) for n in table.data.dead] if table is not None else [],
        "under_replicated_slots": len(under_replicated(table.data)) if table is not None else None,
        "healing": _healing_document(report),
        "draining": [node_name(n) for n in report.draining] if report is not None else [],
        "events": _events_document(report.events, time.time()) if report is not None else [],
    }


def masters_document(state: ClusterState, timeout: float) -> tuple[list[dict[str, Any]], StatusReport | None]:
    """Each master's role and term as it answers for itself, and the leader's view of the cluster."""
    from kvcluster.leader_link import roll_call  # noqa: PLC0415
    from kvcluster.local_file import state_curve  # noqa: PLC0415

    found, report = roll_call(state.master_endpoints(), timeout, state_curve(state))
    masters = []
    for info, (role, term) in zip(state.masters, found, strict=True):
        masters.append({
            "name": info.name, "pid": info.pid, "endpoint": info.endpoint, "process_alive": info.alive(),
            "role": role, "term": term,
        })  # fmt: skip
    return masters, report


def _healing_document(report: StatusReport | None) -> dict[str, Any] | None:
    """Copies under way and the progress of the current round of repairs."""
    if report is None:
        return None
    seconds = report.healing_seconds
    return {
        "copies_under_way": len(report.moving),
        "moving": [{"slot": slot, "from": node_name(src), "to": node_name(dst)} for slot, src, dst in report.moving],
        "slots_done": report.healed_slots,
        "keys_copied": report.healed_keys,
        "seconds": round(seconds, 3),
        "keys_per_s": round(report.healed_keys / seconds) if seconds > 0 else None,
    }


def _disk_document(disk: DiskReport) -> dict[str, Any]:
    return {
        "fsync": disk.policy,
        "last_sync_ms": round(disk.last_sync_ms, 3),
        "p99_sync_ms": round(disk.p99_sync_ms, 3),
        "error": disk.error or None,
    }


def _events_document(events: list[ClusterEvent], received: float) -> list[dict[str, Any]]:
    """The master's events, oldest first, each with its wall-clock time (UTC, ISO 8601) and a sentence."""
    return [
        {
            "time": datetime.fromtimestamp(received - e.age_s, UTC).isoformat(timespec="milliseconds"),
            "age_s": round(e.age_s, 3),
            "kind": e.kind.value,
            "node": node_name(e.node_id) if e.node_id else None,
            "slots": e.slots,
            "text": describe(e),
        }
        for e in events
    ]


def describe(event: ClusterEvent) -> str:
    """One event as a short sentence for people."""
    node, slots = node_name(event.node_id), event.slots
    match event.kind:
        case EventKind.DEAD:
            return f"{node} declared dead"
        case EventKind.JOINED:
            return f"{node} joined as a new node"
        case EventKind.RESTARTED:
            return f"{node} restarted: a new incarnation, given slots by rebalancing"
        case EventKind.RECOVERED:
            return f"cluster started again from its nodes' data ({slots} stale replicas to copy again)"
        case EventKind.PROMOTED:
            return f"{node} promoted to primary of {slots} slots"
        case EventKind.MOVES_STARTED:
            return f"{slots} slot copies started"
        case EventKind.MOVES_FINISHED:
            return f"{slots} slot copies done and published"
        case EventKind.MOVES_CANCELLED:
            return f"{slots} slot copies cancelled"
        case EventKind.DRAIN_STARTED:
            return f"draining {node}"
        case EventKind.DRAIN_FINISHED:
            return f"{node} drained: it holds no slots"


def status_view(doc: dict[str, Any], events: int) -> Group:
    """The nodes table, then the last ``events`` events."""
    from rich.console import Group  # noqa: PLC0415

    parts: list[Any] = [_status_table(doc)]
    if doc["events"]:
        parts.append(_events_table(doc["events"][-events:]))
    return Group(*parts)


def _events_table(events: list[dict[str, Any]]) -> Table:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="Recent events", title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column("time", no_wrap=True)
    table.add_column("event")
    for event in events:
        local = datetime.fromisoformat(event["time"]).astimezone()
        table.add_row(local.strftime("%H:%M:%S.%f")[:-3], event["text"])
    return table


def _status_table(doc: dict[str, Any]) -> Table:
    from rich.table import Table  # noqa: PLC0415

    masters = ", ".join(_master_label(m) for m in doc["masters"])
    curve = "CurveZMQ on" if doc.get("curve") else "CurveZMQ off"
    title = f"masters: {masters}\nrep {doc['rep']}, table version {doc['table_version'] or 'unknown'}, {curve}"
    table = Table(title=title, caption=_status_caption(doc))
    for column in ("node", "pid", "endpoint", "state", "primary", "backup", "keys", "sync"):
        numeric = column in ("pid", "primary", "backup", "keys", "sync")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for node in doc["nodes"]:
        state = "[green]alive[/]" if node["alive"] else "[red]dead[/]"
        keys = "-" if node["keys"] is None or not node["alive"] else str(node["keys"])
        endpoint = node["endpoint"].removeprefix("tcp://")
        table.add_row(
            node["name"],
            str(node["pid"]),
            endpoint,
            state,
            str(node["primary_slots"]),
            str(node["backup_slots"]),
            keys,
            _disk_cell(node["disk"]),
        )
    return table


def _disk_cell(disk: dict[str, Any] | None) -> str:
    """The p99 of the node's log syncs in ms (its policy is in the caption), or that it cannot write."""
    if disk is None:
        return "-"
    if disk["error"]:
        return "[red]failing[/]"
    return f"{disk['p99_sync_ms']:.1f}"


def _master_label(master: dict[str, Any]) -> str:
    if not master["process_alive"]:
        return f"{master['name']} [red]down[/]"
    if master["term"] is None:
        return f"{master['name']} [red]not answering[/]"
    colour = "green" if master["role"] == "leader" else "white"
    return f"{master['name']} [{colour}]{master['role']}[/] (term {master['term']})"


def _status_caption(doc: dict[str, Any]) -> str:
    lines = ["primary, backup: slots held in each role"]
    disks = {n["name"]: n["disk"] for n in doc["nodes"] if n["disk"] is not None and n["alive"]}
    policies = sorted({d["fsync"] for d in disks.values()})
    if policies:
        lines.append(f"sync: p99 ms of log syncs (fsync {', '.join(policies)})")
    lines += [f"[red]{name} cannot write its log: {d['error']}[/]" for name, d in disks.items() if d["error"]]
    if doc["master"]["leader"] is None:
        answering = sum(m["term"] is not None for m in doc["masters"])
        lines.append(
            f"[red]no master is leading ({answering} of {len(doc['masters'])} answering): the table cannot change; "
            "nodes serve only while their leases last[/]"
        )
    short, healing = doc["under_replicated_slots"], doc["healing"]
    if short:
        lines.append(f"[yellow]{short} slots have fewer than {doc['rep']} replicas[/]")
    if healing is not None and (healing["copies_under_way"] or healing["seconds"]):
        rate = f", {healing['keys_per_s']} keys/s" if healing["keys_per_s"] is not None else ""
        lines.append(
            f"healing: {healing['copies_under_way']} copies under way, {healing['slots_done']} slots "
            f"({healing['keys_copied']} keys) restored in {healing['seconds']:.1f} s{rate}"
        )
    return "\n".join(lines)


def print_status(state: ClusterState, *, as_json: bool) -> None:
    print_document(status_document(state), as_json=as_json)


def print_document(doc: dict[str, Any], *, as_json: bool) -> None:
    """A status document as JSON for scripts, or as the table for people."""
    if as_json:
        import json  # noqa: PLC0415

        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    from rich.console import Console  # noqa: PLC0415

    Console().print(status_view(doc, STATUS_EVENTS))
