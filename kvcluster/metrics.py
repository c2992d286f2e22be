"""``up --metrics-port``: the counters ``kvcluster top`` shows, in Prometheus text format on 127.0.0.1.

A small process of its own (``kvcluster _metrics``), started by ``up`` next to
the cluster: each scrape asks every node for ``STATS`` exactly as a frame of
``top`` does (same deadline), so a scrape never waits on a silent node longer
than that. It exits once the cluster's supervisor is gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kvcluster.errors import KvclusterError
from kvcluster.top import NodeProbe, Source, top_document

SCRAPE_TIMEOUT = 0.5  # seconds a scrape waits for the nodes' answers
WATCH_EVERY = 1.0  # seconds between looks at whether the cluster still runs


class StatsCollector:
    """A prometheus_client collector: one ``top`` frame per scrape, behind a lock (the probe's sockets are not
    thread-safe, and the HTTP server answers each scrape on a thread of its own)."""

    def __init__(self, source: Source, timeout: float) -> None:
        self.source = source
        self.timeout = timeout
        self.probe = NodeProbe()
        self.lock = threading.Lock()

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: the nodes are only asked when scraped

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        with self.lock:
            try:
                doc = top_document(self.source, self.probe, self.timeout)
            except KvclusterError:
                return
        up = GaugeMetricFamily("kvcluster_node_up", "1 if the node answered STATS in time, else 0", labels=["node"])
        ops = CounterMetricFamily("kvcluster_node_ops", "Ops served since the node started", labels=["node", "kind"])
        rate = GaugeMetricFamily(
            "kvcluster_node_ops_per_second", "Ops served per second over the last 4-5 s", labels=["node", "kind"]
        )
        latency = GaugeMetricFamily(
            "kvcluster_node_request_latency_seconds",
            "Request latency at the node over the last 4-5 s, arrival to reply",
            labels=["node", "quantile"],
        )
        gauges = {
            "keys": GaugeMetricFamily("kvcluster_node_keys", "Keys the node holds", labels=["node"]),
            "pending_writes": GaugeMetricFamily(
                "kvcluster_node_pending_writes", "Writes waiting for the backups' acknowledgement", labels=["node"]
            ),
            "fsync_p99_ms": GaugeMetricFamily(
                "kvcluster_node_fsync_p99_seconds", "99th percentile of the log's recent syncs", labels=["node"]
            ),
            "oldest_pending_ms": GaugeMetricFamily(
                "kvcluster_node_oldest_pending_write_seconds", "Age of the oldest pending write", labels=["node"]
            ),
            "cpu_percent": GaugeMetricFamily("kvcluster_node_cpu_percent", "CPU % of one core", labels=["node"]),
            "rss_bytes": GaugeMetricFamily("kvcluster_node_rss_bytes", "Resident memory", labels=["node"]),
        }
        slots = GaugeMetricFamily("kvcluster_node_slots", "Slots held, by role", labels=["node", "role"])
        for node in doc["nodes"]:
            name = node["name"]
            up.add_metric([name], 1.0 if node["answered"] else 0.0)
            if not node["answered"]:
                continue
            for kind in ("gets", "puts", "deletes"):
                ops.add_metric([name, kind], node[f"total_{kind}"])
                rate.add_metric([name, kind], node[f"{kind}_per_s"])
            if node["replies"]:  # no request in the window: no latency to speak of
                latency.add_metric([name, "0.5"], node["p50_ms"] / 1000)
                latency.add_metric([name, "0.99"], node["p99_ms"] / 1000)
            slots.add_metric([name, "primary"], node["primary_slots"])
            slots.add_metric([name, "backup"], node["backup_slots"])
            for field, family in gauges.items():
                value = node[field]
                if value is not None:
                    family.add_metric([name], value / 1000 if field.endswith("_ms") else value)
        yield from (up, ops, rate, latency, slots, *gauges.values())


def serve(home: Path, port: int, timeout: float = SCRAPE_TIMEOUT) -> None:
    """Serve ``/metrics`` on 127.0.0.1:``port`` until the cluster in ``home`` stops."""
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    from kvcluster.state import ClusterState  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    collector = StatsCollector(Source(home, None), timeout)
    registry.register(collector)  # a collector is anything with collect()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        while _cluster_runs(ClusterState, home):
            time.sleep(WATCH_EVERY)
    finally:
        server.shutdown()
        thread.join(timeout=2)
        collector.probe.close()


def _cluster_runs(state_type: Any, home: Path) -> bool:
    try:
        return bool(state_type.load(home).supervisor.alive())
    except KvclusterError:
        return False
