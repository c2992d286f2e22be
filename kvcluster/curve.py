"""CurveZMQ on the cluster's sockets: who holds which key, the ZAP allowlist, and noticing a refusal.

Every ROUTER (a master's, a node's) is a CURVE server: it sets its secret
key before it binds. Every connecting socket (a node's DEALERs to the masters
and to its peers, a client's to masters and nodes, the supervisor's exit
watch) sets its own key pair and the public key of the server it connects to.

A CURVE server alone encrypts but accepts any client key. So each server
process runs one ZAP handler (pyzmq's ``ThreadAuthenticator``, one per
context) that allows exactly the public keys the cluster file lists. A client
whose key is not listed completes no handshake and never gets an answer; the
server logs it once per peer address per minute, however often it retries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    from kvcluster.clusterfile import ClusterFile

log = logging.getLogger(__name__)

DENIAL_LOG_EVERY = 60.0  # seconds between log lines about one peer address whose key was refused
REFUSED = zmq.EVENT_HANDSHAKE_FAILED_AUTH
HANDSHAKE_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass(frozen=True, slots=True)
class Curve:
    """The keys one process uses: its own pair, the servers' public keys, and (for a server) whom it admits."""

    public: bytes
    secret: bytes
    masters: tuple[bytes, ...]  # public key of master1, master2, ...
    node: bytes  # the public key every storage node serves with
    allowed: frozenset[bytes] = field(default_factory=frozenset)

    def serve(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server; call before it binds."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def connect_to(self, sock: zmq.Socket[bytes], server: bytes) -> None:
        """Make ``sock`` a CURVE client of the server whose public key is ``server``; call before it connects."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = server


def _key(text: str) -> bytes:
    return text.encode("ascii")


def for_process(cluster: ClusterFile, role: str, member_id: int = 0) -> Curve | None:
    """The keys of a ``master`` (``member_id``), a ``node`` or a ``client`` of ``cluster``; None without CURVE."""
    if not cluster.curve:
        return None
    if role == "master":
        entry = cluster.master(member_id)
        public, secret = entry.public, entry.secret
    elif role == "node":
        public, secret = cluster.node_key.public, cluster.node_key.secret
    else:
        public, secret = cluster.client_key.public, cluster.client_key.secret
    return Curve(
        _key(public),
        _key(secret),
        tuple(_key(m.public) for m in cluster.masters),
        _key(cluster.node_key.public),
        frozenset(_key(k) for k in cluster.allowed),
    )


class _Allowlist:
    """The ZAP callback: a key is allowed if listed; a refusal is logged once per address per minute."""

    def __init__(self, allowed: frozenset[bytes], name: str) -> None:
        self.allowed = allowed
        self.name = name
        self.address = ""  # of the request being decided: ZAP hands the callback only the key
        self.logged: dict[str, float] = {}

    def callback(self, _domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        now = time.monotonic()
        if now - self.logged.get(self.address, -DENIAL_LOG_EVERY) >= DENIAL_LOG_EVERY:
            self.logged[self.address] = now
            log.warning(
                "%s: refused a connection from %s: its CurveZMQ key %s is not in the cluster file "
                "(logged once a minute per address)",
                self.name,
                self.address or "an unknown address",
                key.decode("ascii", "replace"),
            )
        return False


def start_authenticator(ctx: zmq.Context[zmq.Socket[bytes]], curve: Curve, name: str) -> ThreadAuthenticator:
    """Run the ZAP handler of ``ctx``, admitting the keys ``curve`` allows; stop it before destroying ``ctx``."""
    # Imported here: pyzmq's authenticator brings asyncio, about 7 MB of every process that never uses CURVE.
    from zmq.auth.thread import ThreadAuthenticator  # noqa: PLC0415

    class _Authenticator(ThreadAuthenticator):
        """pyzmq's ZAP thread, noting each request's peer address for the allowlist's log line."""

        allowlist: _Allowlist

        async def handle_zap_message(self, msg: list[bytes]) -> None:
            # Requests are handled one at a time on the authenticator's thread, so the address stays this request's.
            self.allowlist.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
            await super().handle_zap_message(msg)

    auth = _Authenticator(ctx, log=log.getChild("zap"))
    auth.allowlist = _Allowlist(curve.allowed, name)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=auth.allowlist)
    return auth


class Handshakes:
    """What a socket monitor saw of CURVE handshakes: whether a server ever let us in, or refused our key."""

    def __init__(self) -> None:
        self.connected = False
        self.succeeded = False
        self.refused = False

    def note(self, event: int) -> None:
        if event == zmq.EVENT_CONNECTED:
            self.connected = True
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.succeeded = True
        elif event & (REFUSED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            self.refused = True

    def shut_out(self) -> bool:
        """A server answered on TCP but no handshake ever succeeded: our key, or the server key we hold, is wrong."""
        return (self.refused or self.connected) and not self.succeeded
