"""The client core's rules with explicit times and no sockets: retries, suspects, refreshes, masters, deadlines.

Each test feeds ``ClientCore`` (or ``LeaderSeeker``) events at chosen times
and checks the actions it returns, as a driver would carry them out. The last
tests check a node's side of request deadlines, with explicit ``now`` too.
"""

from __future__ import annotations

from kvcluster.check.history import Outcome, history_operation
from kvcluster.core.actions import Answer
from kvcluster.core.client import (
    MAX_TRY_TIMEOUT,
    REFRESH_INTERVAL,
    RETRIES_BEFORE_REFRESH,
    RETRY_DELAY,
    SUSPECT_POLL,
    ClientCore,
)
from kvcluster.core.client_masters import ELECTION_PAUSE, TRY_TIMEOUT, AskMaster, LeaderSeeker
from kvcluster.core.client_ops import (
    ClientAction,
    ClientConfig,
    Complete,
    Completion,
    Lane,
    OpResult,
    PendingOp,
    SendRequest,
    WakeAt,
)
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import RoutingTable, initial_table, with_dead
from kvcluster.core.protocol import NotLeader, NotReady, Reply, Request, Table, TableRequest, Timing
from kvcluster.core.wire import Op, OpKind, Result, Status, TableData

ENDPOINTS = {1: "tcp://n1", 2: "tcp://n2", 3: "tcp://n3"}
TRY = 0.3
DEADLINE = 5.0


def table(version: int = 1, dead: tuple[int, ...] = ()) -> TableData:
    data = initial_table(ENDPOINTS, rep=2, slots=8)
    data = with_dead(data, dead) if dead else data
    # Versions are what the client compares; make them what each test says.
    return TableData(**{**{f: getattr(data, f) for f in data.__struct_fields__}, "version": version})


def core_with_table(masters: int = 1, data: TableData | None = None) -> ClientCore:
    return ClientCore(42, masters, ClientConfig(DEADLINE, TRY), RoutingTable(data or table()))


def sends(actions: list[ClientAction]) -> list[SendRequest]:
    return [a for a in actions if isinstance(a, SendRequest)]


def asks(actions: list[ClientAction]) -> list[AskMaster]:
    return [a for a in actions if isinstance(a, AskMaster)]


def completions(actions: list[ClientAction]) -> list[tuple[PendingOp, OpResult]]:
    done = [op for a in actions if isinstance(a, Complete) for op in a.ops]
    return [(op, op.result) for op in done if op.result is not None]


def wake(actions: list[ClientAction]) -> float:
    return [a for a in actions if isinstance(a, WakeAt)][-1].at


def reply(send: SendRequest, status: Status, value: str | None = None) -> Reply:
    return Reply(send.request.request_id, send.node_id, [Result(status, value)] * len(send.request.ops))


def put(core: ClientCore, now: float = 0.0, key: str = "k", lane: Lane | None = None) -> SendRequest:
    core.submit(now, lane or Lane(), [(OpKind.PUT, key, "v")])
    (sent,) = sends(core.take())
    return sent


def primary_of(key: str, data: TableData) -> int:
    routing = RoutingTable(data)
    primary = routing.primary(routing.slot_of(key))
    assert primary is not None
    return primary


def test_a_timeout_makes_a_suspect_and_the_resend_keeps_the_op_id() -> None:
    core = core_with_table()
    first = put(core)
    assert first.node_id == primary_of("k", table())
    core.on_timer(TRY - 0.001)
    assert not sends(core.take())  # not yet
    core.on_timer(TRY)
    actions = core.take()
    assert [a.message for a in asks(actions)] == [TableRequest()]
    assert not sends(actions)  # the resend waits for the table
    core.on_master(TRY + 0.01, 0, Table(table()))
    (second,) = sends(core.take())
    assert second.node_id == first.node_id
    assert second.request.ops[0].op_id == first.request.ops[0].op_id
    assert second.request.request_id != first.request.request_id
    # The second try waits twice as long, and meanwhile the master is asked whether the suspect died.
    now = TRY + 0.01 + SUSPECT_POLL
    core.on_timer(now)
    assert asks(core.take())
    dead = table(version=2, dead=(first.node_id,))
    core.on_master(now + 0.001, 0, Table(dead))
    (third,) = sends(core.take())
    assert third.node_id == primary_of("k", dead) != first.node_id
    assert third.request.ops[0].op_id == first.request.ops[0].op_id


def test_try_timeouts_double_up_to_the_maximum() -> None:
    core = core_with_table()
    assert core.try_timeouts[:3] == [TRY, 2 * TRY, 4 * TRY]
    assert max(core.try_timeouts) == MAX_TRY_TIMEOUT


def test_not_primary_refreshes_then_resends_to_the_new_primary() -> None:
    core = core_with_table()
    first = put(core)
    core.on_reply(0.01, reply(first, Status.NOT_PRIMARY))
    actions = core.take()
    assert asks(actions)
    assert not sends(actions)
    moved = table(version=2, dead=(first.node_id,))
    core.on_master(0.02, 0, Table(moved))
    (second,) = sends(core.take())
    assert second.node_id == primary_of("k", moved) != first.node_id
    assert second.request.ops[0].op_id == first.request.ops[0].op_id


def test_retry_backs_off_and_asks_the_master_from_the_fifth_answer() -> None:
    core = core_with_table()
    sent = put(core)
    now = 0.0
    for attempt in range(1, RETRIES_BEFORE_REFRESH + 1):
        now += 0.001
        core.on_reply(now, reply(sent, Status.RETRY))
        actions = core.take()
        assert not sends(actions)
        assert bool(asks(actions)) == (attempt >= RETRIES_BEFORE_REFRESH)
        assert wake(actions) <= now + RETRY_DELAY
        if asks(actions):
            core.on_master(now, 0, Table(table()))
            actions += core.take()
        core.on_timer(now + RETRY_DELAY)
        (sent,) = sends(actions + core.take())
        now += RETRY_DELAY


def test_table_fetches_are_rate_limited() -> None:
    core = core_with_table()
    first = put(core, key="a")
    second = put(core, key="b")
    core.on_reply(0.01, reply(first, Status.NOT_PRIMARY))
    assert asks(core.take())
    core.on_master(0.02, 0, Table(table()))
    core.take()
    core.on_reply(0.03, reply(second, Status.NOT_PRIMARY))
    actions = core.take()
    assert not asks(actions)  # the last table came 10 ms ago
    assert wake(actions) == 0.02 + REFRESH_INTERVAL
    core.on_timer(0.02 + REFRESH_INTERVAL)
    assert asks(core.take())


def test_not_leader_redirects_and_a_silent_master_is_passed_over() -> None:
    core = ClientCore(42, 3, ClientConfig(DEADLINE, TRY))
    core.submit(0.0, Lane(), [(OpKind.GET, "k", None)])
    assert asks(core.take()) == [AskMaster(0, TableRequest())]
    core.on_master(0.001, 0, NotLeader(term=2, leader=3))
    assert asks(core.take()) == [AskMaster(2, TableRequest())]
    core.on_timer(0.001 + TRY_TIMEOUT)  # master3 is silent: the next one in turn
    assert asks(core.take()) == [AskMaster(0, TableRequest())]
    core.on_master(0.3, 0, NotLeader(term=3, leader=0))  # mid-election: nobody knows the leader
    assert not asks(core.take())
    core.on_timer(0.3 + ELECTION_PAUSE)
    assert asks(core.take()) == [AskMaster(1, TableRequest())]
    core.on_master(0.4, 1, Table(table()))
    assert sends(core.take())
    assert core.seeker.current == 1  # the next question goes to the leader straight away


def test_a_late_redirect_from_a_master_passed_over_is_ignored() -> None:
    seeker = LeaderSeeker(3)
    seeker.ask(0.0, TableRequest())
    assert seeker.on_timer(TRY_TIMEOUT) == AskMaster(1, TableRequest())
    assert seeker.on_answer(0.3, 0, NotLeader(term=1, leader=3)) == (None, None)
    assert seeker.current == 1


def test_not_ready_asks_the_same_master_again_after_a_pause() -> None:
    core = ClientCore(42, 3, ClientConfig(DEADLINE, TRY))
    core.submit(0.0, Lane(), [(OpKind.GET, "k", None)])
    core.take()
    core.on_master(0.001, 0, NotReady(registered=1, expected=3))
    assert not asks(core.take())
    core.on_timer(0.1)
    assert asks(core.take()) == [AskMaster(0, TableRequest())]


def test_at_the_deadline_a_put_is_unknown_and_a_get_failed() -> None:
    core = core_with_table()
    core.submit(0.0, Lane(batch=2, window=2, per_node=2), [(OpKind.PUT, "k", "v"), (OpKind.GET, "k", None)])
    core.take()
    core.on_timer(DEADLINE - 0.001)
    assert not completions(core.take())
    core.on_timer(DEADLINE)
    done = completions(core.take())
    assert [c[1].completion for c in done] == [Completion.TIMED_OUT, Completion.TIMED_OUT]
    outcomes = [history_operation(1, c[0].kind, c[0].key, c[0].value, 0.0, DEADLINE, c[1]) for c in done]
    assert [o.outcome for o in outcomes] == [Outcome.UNKNOWN, Outcome.FAILED]
    assert outcomes[0].value == "v"


def test_without_any_table_the_deadline_says_unavailable() -> None:
    core = ClientCore(42, 1, ClientConfig(DEADLINE, TRY))
    core.submit(0.0, Lane(), [(OpKind.GET, "k", None)])
    core.on_timer(DEADLINE)
    (done,) = completions(core.take())
    assert done[1].completion == Completion.UNAVAILABLE


def test_a_lost_connection_fetches_a_table_at_once_and_resends() -> None:
    core = core_with_table()
    first = put(core)
    core.on_lost(0.002, first.node_id)
    actions = core.take()
    assert asks(actions)
    assert not sends(actions)
    core.on_master(0.003, 0, Table(table()))
    (second,) = sends(core.take())
    assert second.request.ops[0].op_id == first.request.ops[0].op_id


def test_the_request_carries_its_deadline_in_wall_clock_time() -> None:
    core = core_with_table()
    core.wall_offset = 1000.0
    sent = put(core, now=2.0)
    assert sent.request.deadline == 2.0 + DEADLINE + 1000.0


def test_operations_queued_behind_a_flight_to_the_same_node_travel_together() -> None:
    core = core_with_table()
    shared = Lane(batch=256, window=1 << 30, per_node=1)
    first = put(core, key="k", lane=shared)
    node = first.node_id
    same_node = [k for k in (f"x{i}" for i in range(200)) if primary_of(k, table()) == node][:3]
    core.submit(0.001, shared, [(OpKind.PUT, same_node[0], "1")])
    core.submit(0.002, shared, [(OpKind.GET, same_node[1], None), (OpKind.DELETE, same_node[2], None)])
    assert not sends(core.take())  # the node has a request of this lane in flight
    core.on_reply(0.003, reply(first, Status.OK))
    actions = core.take()
    (together,) = sends(actions)
    assert [op.key for op in together.request.ops] == same_node
    assert [c[1].completion for c in completions(actions)] == [Completion.OK]


def test_a_lane_caps_its_batch_and_window() -> None:
    core = core_with_table()
    keys = [f"w{i}" for i in range(40)]
    core.submit(0.0, Lane(batch=4, window=3, per_node=3), [(OpKind.PUT, k, "v") for k in keys])
    sent = sends(core.take())
    assert len(sent) == 3
    assert all(1 <= len(s.request.ops) <= 4 for s in sent)


# --- the node's side of request deadlines ---


def node_ready() -> NodeCore:
    node = NodeCore(1, ENDPOINTS[1], 1, Timing())
    node.start(0.0)
    node.take()
    return node


def client_request(deadline: float) -> Request:
    return Request(7, 1, [Op(OpKind.GET, "k", None, 0, 0, 1)], deadline)


def test_a_node_drops_a_request_whose_deadline_has_passed() -> None:
    node = node_ready()
    node.wall_offset = 100.0
    node.on_router(10.0, "client", client_request(deadline=109.0))
    assert not [a for a in node.take() if isinstance(a, Answer)]
    assert node.expired_requests == 1


def test_a_node_serves_a_request_within_its_deadline_or_without_one() -> None:
    node = node_ready()
    node.wall_offset = 100.0
    node.on_router(10.0, "client", client_request(deadline=111.0))
    node.on_router(10.0, "client", client_request(deadline=0.0))  # an older client: no deadline
    node.flush(10.0)
    assert len([a for a in node.take() if isinstance(a, Answer)]) == 2
    assert node.expired_requests == 0


def test_a_window_is_shared_among_the_nodes_in_turn() -> None:
    core = core_with_table()
    keys = [f"r{i}" for i in range(300)]
    core.submit(0.0, Lane(batch=2, window=6, per_node=6), [(OpKind.GET, k, None) for k in keys])
    sent = sends(core.take())
    assert len(sent) == 6
    assert sorted({s.node_id for s in sent}) == sorted({primary_of(k, table()) for k in keys})
