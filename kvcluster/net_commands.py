"""``kvcluster net``: partition a cluster started with ``up --netns``, one-way cuts, flaky links, heal, status.

Names are ``serverN``, ``masterN``, ``master`` (the leading master, whichever
it is now) and ``clients`` (this machine, where the CLI and the supervisor
run). Each command prints what it did in one line; the rules are in
``netcuts.py``.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Annotated

import typer

from kvcluster.cli_options import Home
from kvcluster.data_commands import home_dir, say
from kvcluster.errors import UsageError
from kvcluster.netns import CLIENTS, NetHosts

LEADER_WAIT = 10.0

net_app = typer.Typer(no_args_is_help=True, help="Cut links between the hosts of a cluster started with up --netns.")


def _hosts(home: Path | None) -> tuple[Path, NetHosts]:
    state_home = home_dir(home)
    hosts = NetHosts.load(state_home)
    if hosts is None:
        raise UsageError(f"no cluster on separate hosts in {state_home}: start one with kvcluster up --netns")
    return state_home, hosts


def _names(text: str, home: Path, hosts: NetHosts) -> list[str]:
    """``A,B,...`` as host names; ``master`` is the leading master now."""
    names = []
    for given in (part.strip() for part in text.split(",") if part.strip()):
        name = _leader(home) if given == "master" else given
        if name != CLIENTS and name not in hosts.numbers:
            known = ", ".join([*hosts.names(), "master", CLIENTS])
            raise UsageError(f"unknown host {name!r}: this cluster has {known}")
        names.append(name)
    if not names:
        raise UsageError("name at least one host")
    return list(dict.fromkeys(names))


def _leader(home: Path) -> str:
    """The leading master; an election (after a heal, say) is waited out for up to ``LEADER_WAIT`` seconds."""
    from kvcluster.state import ClusterState  # noqa: PLC0415
    from kvcluster.status_view import masters_document  # noqa: PLC0415

    deadline = time.monotonic() + LEADER_WAIT
    while True:
        masters, _ = masters_document(ClusterState.load(home), timeout=2.0)
        leader = next((m["name"] for m in masters if m["role"] == "leader"), None)
        if leader is not None:
            return str(leader)
        if time.monotonic() >= deadline:
            raise UsageError(
                f"no master has led for {LEADER_WAIT:.0f} s (see kvcluster status); name one: master1, master2..."
            )
        time.sleep(0.2)  # an election takes a few hundred milliseconds; ask again shortly


@net_app.command()
def partition(
    hosts_list: Annotated[str, typer.Argument(metavar="A,B,...", help="The hosts to cut off.")],
    others: Annotated[
        str | None, typer.Option("--from", help="Cut them off from these hosts only (default: from every other).")
    ] = None,
    home: Home = None,
) -> None:
    """Cut hosts off from the others, or from the ones --from lists, in both directions."""
    from kvcluster.netcuts import cut  # noqa: PLC0415

    state_home, hosts = _hosts(home)
    side = _names(hosts_list, state_home, hosts)
    if others is None:
        rest = [n for n in [*hosts.names(), CLIENTS] if n not in side]
    else:
        rest = _names(others, state_home, hosts)
    if set(side) & set(rest):
        raise UsageError(f"a host cannot be cut off from itself: {', '.join(sorted(set(side) & set(rest)))}")
    for one, other in itertools.product(side, rest):
        cut(hosts, one, other)
    say(f"cut {', '.join(side)} off from {', '.join(rest)}")


@net_app.command()
def oneway(
    source: Annotated[str, typer.Argument(metavar="A", help="The host whose packets are dropped.")],
    target: Annotated[str, typer.Option("--to", help="The host they no longer reach.")],
    home: Home = None,
) -> None:
    """Drop only what A sends to B; B still reaches A."""
    from kvcluster.netcuts import oneway as cut_oneway  # noqa: PLC0415

    state_home, hosts = _hosts(home)
    [one] = _names(source, state_home, hosts)
    [other] = _names(target, state_home, hosts)
    if one == other:
        raise UsageError("a host cannot be cut off from itself")
    cut_oneway(hosts, one, other)
    say(f"dropping what {one} sends to {other}")


@net_app.command()
def flaky(
    host: Annotated[str, typer.Argument(metavar="A", help="A server or master.")],
    loss: Annotated[float, typer.Option("--loss", min=0.01, max=1.0, help="Share of packets dropped.")] = 0.2,
    home: Home = None,
) -> None:
    """Drop a share of everything a host sends and receives, at random."""
    from kvcluster.netcuts import flaky as make_flaky  # noqa: PLC0415

    state_home, hosts = _hosts(home)
    [name] = _names(host, state_home, hosts)
    make_flaky(hosts, name, loss)
    say(f"{name} loses {round(loss * 100)}% of its packets, both ways")


@net_app.command()
def heal(home: Home = None) -> None:
    """Remove every cut, one-way cut and lossy link."""
    from kvcluster.netcuts import heal as heal_all  # noqa: PLC0415

    _, hosts = _hosts(home)
    count = heal_all(hosts)
    say(f"healed: removed the rules of {count} host{'' if count == 1 else 's'}")


@net_app.command()
def status(home: Home = None) -> None:
    """The cuts in force, one per line."""
    from kvcluster.netcuts import in_force  # noqa: PLC0415

    _, hosts = _hosts(home)
    cuts = in_force(hosts)
    addresses = ", ".join(f"{n} {hosts.ip(n)}" for n in [*hosts.names(), CLIENTS])
    say(f"hosts: {addresses}")
    say("\n".join(cuts) if cuts else "no cuts: every link works")
