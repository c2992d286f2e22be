"""Tests for kvcluster.check.history and kvcluster.check.linearizability."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from kvcluster.check.history import HistoryRecorder, Operation, OpKind, Outcome
from kvcluster.check.linearizability import CheckTooExpensive, Violation, check


def put(
    client: int,
    value: str,
    invoke: float,
    complete: float,
    outcome: Outcome = Outcome.OK,
    key: str = "k",
) -> Operation:
    return Operation(client, OpKind.PUT, key, value, invoke, complete, outcome)


def get(
    client: int,
    value: str | None,
    invoke: float,
    complete: float,
    outcome: Outcome | None = None,
    key: str = "k",
) -> Operation:
    if outcome is None:
        outcome = Outcome.NOT_FOUND if value is None else Outcome.OK
    return Operation(client, OpKind.GET, key, value, invoke, complete, outcome)


def delete(client: int, invoke: float, complete: float, outcome: Outcome = Outcome.OK, key: str = "k") -> Operation:
    return Operation(client, OpKind.DELETE, key, None, invoke, complete, outcome)


def assert_linearizable(history: list[Operation]) -> None:
    result = check(history)
    assert result.ok, result.violation.describe() if result.violation else ""
    assert result.violation is None


def assert_violation(history: list[Operation]) -> Violation:
    result = check(history)
    assert not result.ok
    assert result.violation is not None
    return result.violation


# --- accepted histories ----------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([])
    assert result.ok
    assert (result.operations, result.keys) == (0, 0)


def test_sequential_history_is_linearizable() -> None:
    assert_linearizable(
        [
            get(1, None, 0, 1),
            put(1, "a", 2, 3),
            get(2, "a", 4, 5),
            put(2, "b", 6, 7),
            get(1, "b", 8, 9),
            get(3, "b", 10, 11),
        ]
    )


@pytest.mark.parametrize("seen", ["a", "b"])
def test_get_concurrent_with_put_may_see_either_value(seen: str) -> None:
    assert_linearizable(
        [
            put(1, "a", 0, 1),
            put(2, "b", 2, 5),
            get(3, seen, 3, 4),
        ]
    )


def test_concurrent_puts_may_take_effect_in_either_order() -> None:
    for final in ("a", "b"):
        assert_linearizable(
            [
                put(1, "a", 0, 3),
                put(2, "b", 1, 2),
                get(3, final, 4, 5),
            ]
        )


def test_touching_intervals_count_as_concurrent() -> None:
    # "b" was invoked the instant "a" completed: with coarse clocks "b"
    # may really have run first.
    assert_linearizable(
        [
            put(1, "a", 0, 1),
            put(2, "b", 1, 2),
            get(3, "a", 3, 4),
        ]
    )


def test_unknown_put_that_later_shows_up_is_accepted() -> None:
    assert_linearizable(
        [
            put(1, "a", 0, 1),
            put(2, "b", 2, 3, Outcome.UNKNOWN),
            get(3, "b", 4, 5),
        ]
    )


def test_unknown_put_may_take_effect_after_client_gave_up() -> None:
    assert_linearizable(
        [
            put(1, "a", 0, 1, Outcome.UNKNOWN),
            get(2, None, 2, 3),
            get(2, "a", 4, 5),
        ]
    )


def test_unknown_put_that_never_shows_up_is_accepted() -> None:
    assert_linearizable(
        [
            put(1, "a", 0, 1),
            put(2, "b", 2, 3, Outcome.UNKNOWN),
            get(3, "a", 4, 5),
            get(3, "a", 6, 7),
        ]
    )


def test_failed_and_unknown_gets_carry_no_information() -> None:
    history = [
        put(1, "a", 0, 1),
        get(2, "zzz", 2, 3, Outcome.FAILED),
        get(2, None, 4, 5, Outcome.UNKNOWN),
        get(3, "a", 6, 7),
    ]
    result = check(history)
    assert result.ok
    assert result.operations == 2


# --- rejected histories ----------------------------------------------------


def test_stale_read_is_rejected() -> None:
    violation = assert_violation(
        [
            put(1, "a", 0, 1),
            put(2, "b", 2, 3),
            get(3, "a", 4, 5),
        ]
    )
    assert violation.key == "k"
    assert len(violation.operations) == 3


def test_lost_write_is_rejected() -> None:
    assert_violation(
        [
            put(1, "a", 0, 1),
            put(1, "b", 2, 3),
            get(2, "b", 4, 5),
            get(2, "a", 6, 7),
        ]
    )


def test_acked_put_then_not_found_is_rejected() -> None:
    violation = assert_violation(
        [
            get(1, None, 0, 1),
            put(1, "a", 2, 3),
            get(2, None, 4, 5),
        ]
    )
    assert [op.value for op in violation.operations] == ["a", None]


def test_reordered_sequential_writes_are_rejected() -> None:
    assert_violation(
        [
            put(1, "a", 0, 1),
            put(2, "b", 2, 3),
            get(1, "a", 4, 5),
            get(2, "a", 6, 7),
        ]
    )


def test_unknown_put_read_then_older_value_again_is_rejected() -> None:
    assert_violation(
        [
            put(1, "a", 0, 1),
            put(2, "b", 2, 3, Outcome.UNKNOWN),
            get(3, "b", 4, 5),
            get(3, "a", 6, 7),
        ]
    )


def test_read_of_failed_put_is_rejected_and_shown() -> None:
    failed = put(2, "b", 2, 3, Outcome.FAILED)
    violation = assert_violation([put(1, "a", 0, 1), failed, get(3, "b", 4, 5)])
    assert failed in violation.operations
    assert "failed" in violation.describe()


def test_read_of_value_never_written_is_rejected() -> None:
    violation = assert_violation([put(1, "a", 0, 1), get(2, "ghost", 2, 3)])
    assert [op.value for op in violation.operations] == ["ghost"]


def test_read_before_the_write_was_invoked_is_rejected() -> None:
    assert_violation([get(1, "a", 0, 1), put(2, "a", 2, 3)])


# --- keys ------------------------------------------------------------------


def test_a_delete_is_a_write_of_absent() -> None:
    assert_linearizable([put(1, "a", 0, 1), delete(2, 2, 3), get(1, None, 4, 5)])
    assert_linearizable([put(1, "a", 0, 1), delete(2, 2, 3, Outcome.NOT_FOUND), get(1, None, 4, 5)])
    assert_linearizable([put(1, "a", 0, 1), delete(2, 2, 3, Outcome.UNKNOWN), get(1, None, 4, 5), get(1, None, 6, 7)])
    assert_linearizable([put(1, "a", 0, 1), delete(2, 2, 3, Outcome.FAILED), get(1, "a", 4, 5)])
    assert_violation([put(1, "a", 0, 1), delete(2, 2, 3), get(1, "a", 4, 5)])
    assert_violation([put(1, "a", 0, 1), delete(2, 2, 3, Outcome.FAILED), get(1, None, 4, 5)])
    assert_violation([put(1, "a", 0, 1), delete(2, 2, 3), put(1, "b", 4, 5), get(2, None, 6, 7)])


def test_keys_are_checked_independently() -> None:
    # As a single register this would be a stale read of "1".
    history = [
        put(1, "1", 0, 1, key="x"),
        put(2, "2", 2, 3, key="y"),
        get(1, "1", 4, 5, key="x"),
        get(2, "2", 6, 7, key="y"),
    ]
    result = check(history)
    assert result.ok
    assert (result.operations, result.keys) == (4, 2)


def test_violation_names_the_offending_key() -> None:
    history = [
        put(1, "1", 0, 1, key="x"),
        get(1, "1", 2, 3, key="x"),
        put(2, "a", 0, 1, key="y"),
        get(2, None, 2, 3, key="y"),
    ]
    result = check(history)
    assert not result.ok
    assert result.violation is not None
    assert result.violation.key == "y"
    assert {op.key for op in result.violation.operations} == {"y"}


# --- shrinking and reporting -----------------------------------------------


def consistent_padding(start: float, count: int, key: str = "k") -> list[Operation]:
    """Alternating puts and gets, each get reading the put just before it."""
    ops: list[Operation] = []
    for i in range(count // 2):
        t = start + 4 * i
        ops.append(put(5 + i % 3, f"pad{i}", t, t + 1, key=key))
        ops.append(get(8 + i % 2, f"pad{i}", t + 2, t + 3, key=key))
    return ops


def test_violation_is_shrunk_to_the_offending_operations() -> None:
    stale = [put(1, "a", 100, 101), put(2, "b", 102, 103), get(3, "a", 104, 105)]
    history = consistent_padding(0, 25) + stale + consistent_padding(200, 25)
    violation = assert_violation(history)
    assert len(violation.operations) <= 4
    assert set(stale) <= set(violation.operations)


def test_describe_renders_one_line_per_operation() -> None:
    violation = assert_violation(
        [
            put(1, "a", 10.0, 10.010),
            put(12, "b", 10.020, 10.030),
            get(3, "a", 10.040, 10.050),
        ]
    )
    lines = violation.describe().splitlines()
    assert "'k'" in lines[0]
    assert len(lines) == 4
    assert lines[1] == "  client 1   put k = 'a'   [0.000 → 0.010] ok"
    assert lines[2] == "  client 12  put k = 'b'   [0.020 → 0.030] ok"
    assert lines[3] == "  client 3   get k = 'a'   [0.040 → 0.050] ok"


def test_describe_shows_absent_reads() -> None:
    violation = assert_violation([put(1, "a", 0, 1), get(2, None, 2, 3)])
    assert "get k = (absent)" in violation.describe()
    assert "not_found" in violation.describe()


# --- validation and limits -------------------------------------------------


def test_impossible_outcome_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot have outcome"):
        check([put(1, "a", 0, 1, Outcome.NOT_FOUND)])


def test_interval_ending_before_it_starts_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="before it was invoked"):
        check([put(1, "a", 2, 1)])


def test_state_limit_raises_check_too_expensive() -> None:
    # Ten concurrent puts, then two reads that no order of them explains:
    # proving that means trying every subset.
    history = [put(i, f"v{i}", 0, 1) for i in range(10)]
    history += [get(20, "v0", 2, 3), get(20, "v1", 4, 5)]
    with pytest.raises(CheckTooExpensive, match="'k'") as raised:
        check(history, max_states=50)
    assert (raised.value.key, raised.value.operations, raised.value.max_states) == ("k", 12, 50)
    assert not check(history).ok


# --- randomised histories --------------------------------------------------


def simulate_register(seed: int, operations: int, clients: int, keys: int = 1) -> list[Operation]:
    """A history of a correct register: each operation takes effect at a
    random instant inside its interval, UNKNOWN puts possibly later or never.
    """
    rng = random.Random(seed)
    # (effect time or None, client, kind, key, value, invoke, complete, outcome)
    planned: list[tuple[float | None, int, OpKind, str, str | None, float, float, Outcome]] = []
    serial = 0
    for client in range(clients):
        now = rng.uniform(0, 0.005)
        for _ in range(operations // clients):
            invoke = now
            complete = invoke + rng.expovariate(1 / 0.004)
            key = f"key{rng.randrange(keys)}"
            fate = rng.random()
            effect: float | None = rng.uniform(invoke, complete)
            if rng.random() < 0.4:
                kind, value = OpKind.PUT, f"v{serial}"
                serial += 1
                if fate < 0.05:
                    outcome, effect = Outcome.FAILED, None
                elif fate < 0.10:
                    outcome = Outcome.UNKNOWN
                    effect = rng.choice([None, rng.uniform(invoke, complete + 0.05)])
                else:
                    outcome = Outcome.OK
            else:
                kind, value = OpKind.GET, None
                outcome = Outcome.UNKNOWN if fate < 0.05 else Outcome.OK
            planned.append((effect, client, kind, key, value, invoke, complete, outcome))
            now = complete + rng.expovariate(1 / 0.002)

    register: dict[str, str | None] = {}
    history: list[Operation] = []
    in_effect_order = sorted(planned, key=lambda p: (p[0] is None, p[0] or 0.0))
    for effect, client, kind, key, written, invoke, complete, planned_outcome in in_effect_order:
        value, outcome = written, planned_outcome
        if effect is not None and kind is OpKind.PUT:
            register[key] = written
        elif kind is OpKind.GET and planned_outcome is Outcome.OK:
            value = register.get(key)
            outcome = Outcome.OK if value is not None else Outcome.NOT_FOUND
        history.append(Operation(client, kind, key, value, invoke, complete, outcome))
    rng.shuffle(history)
    return history


# "Quickly" is measured in search states, which are the same on every machine and every run, not in seconds,
# which depend on how busy the machine is. These histories take 2,000 to 9,000 states; a search that grew
# exponential with the number of concurrent operations would blow through the budget and raise CheckTooExpensive.
QUICK_STATES = 50_000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_large_random_linearizable_history_is_accepted_quickly(seed: int) -> None:
    history = simulate_register(seed, operations=1000, clients=8)
    result = check(history, max_states=QUICK_STATES)
    assert result.ok, result.violation.describe() if result.violation else ""
    assert result.operations > 900


def test_single_key_with_ten_clients_is_accepted_quickly() -> None:
    history = simulate_register(6, operations=2000, clients=10)
    result = check(history, max_states=QUICK_STATES)
    assert result.ok


def test_random_multi_key_history_is_accepted() -> None:
    result = check(simulate_register(4, operations=2000, clients=10, keys=5))
    assert result.ok
    assert result.keys == 5


def test_stale_read_at_end_of_large_history_is_found_and_shrunk() -> None:
    history = simulate_register(5, operations=1000, clients=8)
    acked = sorted(
        (op for op in history if op.kind is OpKind.PUT and op.outcome is Outcome.OK),
        key=lambda op: op.invoke,
    )
    first = acked[0]
    assert any(op.invoke > first.complete for op in acked)
    end = max(op.complete for op in history)
    stale = get(99, first.value, end + 1, end + 2, key=first.key)

    violation = assert_violation([*history, stale])
    assert stale in violation.operations
    assert first in violation.operations
    assert len(violation.operations) <= 4


# --- history recording -----------------------------------------------------


def test_operation_json_round_trip() -> None:
    ops = [
        put(1, "a", 0.25, 0.5),
        get(2, None, 1.0, 1.5),
        put(3, "b", 2.0, 3.0, Outcome.UNKNOWN, key="other"),
        get(4, None, 2.0, 2.5, Outcome.FAILED),
    ]
    for op in ops:
        assert Operation.from_json(json.loads(json.dumps(op.to_json()))) == op
    assert put(1, "a", 0, 1).to_json()["kind"] == "put"


def test_operation_from_json_rejects_malformed_records() -> None:
    record = put(1, "a", 0, 1).to_json()
    with pytest.raises(ValueError, match="client"):
        Operation.from_json({**record, "client": "one"})
    with pytest.raises(ValueError, match="invoke"):
        Operation.from_json({k: v for k, v in record.items() if k != "invoke"})
    with pytest.raises(ValueError):
        Operation.from_json({**record, "outcome": "maybe"})


def test_recorder_save_and_load(tmp_path: Path) -> None:
    recorder = HistoryRecorder()
    recorder.record(put(1, "a", 0, 1))
    other = HistoryRecorder()
    other.record(get(2, "a", 2, 3))
    other.record(put(2, "b", 4, 5, Outcome.UNKNOWN))
    recorder.extend(other.operations)

    path = tmp_path / "history.jsonl"
    recorder.save(path)
    assert len(path.read_text().splitlines()) == 3
    assert HistoryRecorder.load(path) == recorder.operations


def test_recorder_operations_is_a_copy() -> None:
    recorder = HistoryRecorder()
    recorder.record(put(1, "a", 0, 1))
    recorder.operations.clear()
    assert len(recorder.operations) == 1


def test_stale_read_in_middle_of_concurrent_history_is_found_and_shrunk() -> None:
    history = sorted(simulate_register(7, operations=2000, clients=10), key=lambda op: op.invoke)
    acked = [op for op in history if op.kind is OpKind.PUT and op.outcome is Outcome.OK]
    overwritten = acked[len(acked) // 2]
    newer = next(op for op in acked if op.invoke > overwritten.complete)
    stale = get(99, overwritten.value, newer.complete + 1e-6, newer.complete + 2e-6, key=overwritten.key)

    violation = assert_violation([*history, stale])
    assert stale in violation.operations
    assert overwritten in violation.operations
    assert len(violation.operations) <= 4


# --- cross-check against brute force --------------------------------------


def brute_force_linearizable(history: list[Operation]) -> bool:
    """Try every subset of UNKNOWN puts and every order: slow but obviously right."""
    relevant = [
        op
        for op in history
        if (op.kind is not OpKind.GET and op.outcome is not Outcome.FAILED)
        or (op.kind is OpKind.GET and op.outcome in (Outcome.OK, Outcome.NOT_FOUND))
    ]
    maybe = [op for op in relevant if op.outcome is Outcome.UNKNOWN]
    certain = [op for op in relevant if op.outcome is not Outcome.UNKNOWN]

    def returned(op: Operation) -> float:
        return float("inf") if op.outcome is Outcome.UNKNOWN else op.complete

    def legal(order: tuple[Operation, ...]) -> bool:
        for earlier, later in itertools.combinations(order, 2):
            if returned(later) < earlier.invoke:
                return False
        state: str | None = None
        for op in order:
            if op.kind is not OpKind.GET:
                state = op.value  # None for a delete
            elif state != (None if op.outcome is Outcome.NOT_FOUND else op.value):
                return False
        return True

    subsets = itertools.chain.from_iterable(itertools.combinations(maybe, n) for n in range(len(maybe) + 1))
    return any(legal(order) for subset in subsets for order in itertools.permutations(certain + list(subset)))


def random_small_history(rng: random.Random) -> list[Operation]:
    ops = []
    for client in range(rng.randint(1, 6)):
        invoke = rng.randint(0, 8)
        complete = invoke + rng.randint(0, 4)
        # Few distinct values, so values repeat and reads are often stale.
        value = rng.choice(["a", "b", "c", None])
        if rng.random() < 0.5:
            outcome = rng.choice([Outcome.OK, Outcome.OK, Outcome.OK, Outcome.UNKNOWN, Outcome.FAILED])
            if rng.random() < 0.25:
                ops.append(delete(client, invoke, complete, outcome))
            else:
                ops.append(put(client, value or "a", invoke, complete, outcome))
        else:
            ops.append(get(client, value, invoke, complete, Outcome.UNKNOWN if rng.random() < 0.1 else None))
    return ops


def test_agrees_with_brute_force_on_small_random_histories() -> None:
    rng = random.Random(2024)
    rejected = 0
    for _ in range(1500):
        history = random_small_history(rng)
        result = check(history)
        assert result.ok == brute_force_linearizable(history), history
        if result.violation is not None:
            rejected += 1
            # The shrunk violation must be a genuine violation on its own.
            assert not brute_force_linearizable(result.violation.operations), history
    assert rejected > 100
