"""``kvcluster status --cluster FILE``: the cluster as its masters see it, from any host.

The local ``status`` joins the leader's report with the processes the state
directory records on this machine. A cluster on many hosts has no such record
here, so this view takes the masters from the cluster file and everything
else (nodes, pids, liveness) from the leader's report, in the same document
shape, plus whether CurveZMQ is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvcluster import clusterfile
from kvcluster.core.placement import node_name
from kvcluster.curve import for_process
from kvcluster.master_group import master_name
from kvcluster.status_view import cluster_document, print_document


def remote_document(path: Path, timeout: float = 2.0) -> dict[str, Any]:
    from kvcluster.addresses import parse_addresses  # noqa: PLC0415
    from kvcluster.core.placement import RoutingTable  # noqa: PLC0415
    from kvcluster.leader_link import roll_call  # noqa: PLC0415
    from kvcluster.status_view import _disk_document  # noqa: PLC0415

    cluster = clusterfile.load(path)
    found, report = roll_call(parse_addresses(cluster.master_endpoints()), timeout, for_process(cluster, "client"))
    masters = [
        {
            "name": master_name(i),
            "pid": report.master_pid if report is not None and role == "leader" else None,
            "endpoint": f"tcp://{entry.endpoint}",
            "process_alive": term is not None,
            "role": role,
            "term": term,
        }
        for i, (entry, (role, term)) in enumerate(zip(cluster.masters, found, strict=True), start=1)
    ]
    table = RoutingTable(report.table) if report is not None and report.table is not None else None
    nodes = []
    for view in report.nodes if report is not None else []:
        primary, backup = table.slots_of(view.node_id) if table is not None else (0, 0)
        nodes.append({
            "name": node_name(view.node_id), "id": view.node_id, "pid": view.pid, "endpoint": view.endpoint,
            "alive": view.alive, "process_alive": None, "declared_dead": not view.alive,
            "primary_slots": primary, "backup_slots": backup, "keys": view.keys,
            "disk": _disk_document(view.disk) if view.disk is not None else None,
        })  # fmt: skip
    leader = next((m for m in masters if m["role"] == "leader"), None)
    return {
        "cluster_file": str(path),
        "curve": cluster.curve,
        "nodes_total": len(nodes) or cluster.nodes,
        "rep": cluster.rep,
        "master": {
            "endpoint": cluster.master_endpoints(),
            "pid": leader["pid"] if leader else None,
            "alive": report is not None,
            "leader": leader["name"] if leader else None,
            "term": leader["term"] if leader else None,
        },
        "masters": masters,
        **cluster_document(report, table),
        "nodes": nodes,
    }


def print_remote_status(path: Path, *, as_json: bool) -> None:
    print_document(remote_document(path), as_json=as_json)
