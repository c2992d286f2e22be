"""Cutting links between the hosts of a cluster started with ``up --netns``: nftables rules, nothing else.

Every rule lives in a table ``inet kvcluster`` inside the namespace of the
host it filters, so ``down`` removes the rules with the namespaces, and this
machine's own namespace (the ``clients`` host) never gets one. A cut of A
from B drops, on each of them that is a namespace, what comes from the other
and what goes to it; a one-way cut drops A's packets to B at B (or, when B is
``clients``, as they leave A); random loss is a ``numgen random`` rule on a
host's ``eth0`` (this kernel has no netem). A dropped packet is lost, not
refused: TCP retransmits it, and ZeroMQ queues what it cannot send, so
messages held during a cut may arrive long after it heals. That is the point.

The rule comments name the cut, so ``net status`` can list them.
"""

from __future__ import annotations

import subprocess

from kvcluster.errors import UsageError
from kvcluster.netns import CLIENTS, NetHosts

TABLE = "kvcluster"


def _nft(hosts: NetHosts, host: str, script: str) -> str:
    proc = subprocess.run(  # noqa: S603 - ip and nft from PATH, with arguments built here
        hosts.wrap(host, ["nft", "-f", "-"]), input=script, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise UsageError(f"nft on {host}: {proc.stderr.strip()}")
    return proc.stdout


def _ensure_table(hosts: NetHosts, host: str) -> None:
    _nft(
        hosts,
        host,
        f"table inet {TABLE} {{\n"
        "  chain input { type filter hook input priority 0; policy accept; }\n"
        "  chain output { type filter hook output priority 0; policy accept; }\n"
        "}\n",
    )


def _rule(hosts: NetHosts, host: str, chain: str, match: str, note: str) -> None:
    _ensure_table(hosts, host)
    _nft(hosts, host, f'add rule inet {TABLE} {chain} {match} drop comment "{note}"\n')


def cut(hosts: NetHosts, one: str, other: str) -> None:
    """No packet between ``one`` and ``other``, either way."""
    note = f"cut {one} / {other}"
    for here, there in ((one, other), (other, one)):
        if here != CLIENTS:
            _rule(hosts, here, "input", f"ip saddr {hosts.ip(there)}", note)
            _rule(hosts, here, "output", f"ip daddr {hosts.ip(there)}", note)


def oneway(hosts: NetHosts, source: str, target: str) -> None:
    """No packet from ``source`` to ``target``; the other way still works."""
    note = f"oneway {source} -> {target}"
    if target != CLIENTS:
        _rule(hosts, target, "input", f"ip saddr {hosts.ip(source)}", note)
    else:
        _rule(hosts, source, "output", f"ip daddr {hosts.ip(target)}", note)


def flaky(hosts: NetHosts, host: str, loss: float) -> None:
    """Drop a share ``loss`` of ``host``'s packets, both ways, at random."""
    if host == CLIENTS:
        raise UsageError("flaky takes a server or master: the clients' host is this machine's own")
    percent = round(loss * 100)
    note = f"flaky {host} {percent}%"
    _rule(hosts, host, "input", f'iifname "eth0" numgen random mod 100 < {percent}', note)
    _rule(hosts, host, "output", f'oifname "eth0" numgen random mod 100 < {percent}', note)


def heal(hosts: NetHosts) -> int:
    """Remove every rule; return how many hosts had some."""
    healed = 0
    for host in hosts.names():
        proc = subprocess.run(  # noqa: S603 - ip and nft from PATH, with arguments built here
            hosts.wrap(host, ["nft", "delete", "table", "inet", TABLE]), capture_output=True, check=False
        )
        healed += proc.returncode == 0
    return healed


def in_force(hosts: NetHosts) -> list[str]:
    """The cuts in force, one line each, from the comments of the rules."""
    found: dict[str, None] = {}
    for host in hosts.names():
        proc = subprocess.run(  # noqa: S603 - ip and nft from PATH, with arguments built here
            hosts.wrap(host, ["nft", "list", "table", "inet", TABLE]), capture_output=True, text=True, check=False
        )
        for line in proc.stdout.splitlines():
            if 'comment "' in line:
                found[line.split('comment "', 1)[1].rstrip('"')] = None
    return list(found)
