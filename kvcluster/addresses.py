"""Addresses as users give them (``HOST:PORT``, alone or comma-separated) turned into ZeroMQ endpoints."""

from __future__ import annotations

from kvcluster.errors import InvalidAddress


def parse_address(address: str) -> str:
    """Turn ``HOST:PORT`` (or ``tcp://HOST:PORT``) into a ZeroMQ endpoint, or raise ``InvalidAddress``."""
    bare = address.removeprefix("tcp://")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidAddress(f"invalid address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return f"tcp://{host}:{int(port)}"


def parse_addresses(addresses: str) -> list[str]:
    """Every endpoint of a comma-separated list of masters, or ``InvalidAddress`` naming the bad one."""
    parts = addresses.split(",")
    if len(parts) == 1:
        return [parse_address(addresses)]
    try:
        return [parse_address(part.strip()) for part in parts]
    except InvalidAddress as exc:
        raise InvalidAddress(f"{exc}, in the list {addresses!r}") from None
