"""A slot's sorted pairs: lookups, updates and key order, including keys that are prefixes of others."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvcluster.core.protocol import check_key
from kvcluster.core.store import SlotStore

KEYS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=6).filter(lambda k: check_key(k) is None)
VALUES = st.text(st.characters(codec="utf-8"), max_size=4)


@given(st.lists(st.tuples(KEYS, st.one_of(st.none(), VALUES)), max_size=40))
def test_a_store_holds_what_a_dict_would_and_lists_its_keys_in_order(writes: list[tuple[str, str | None]]) -> None:
    store, expected = SlotStore(), {}
    for key, value in writes:
        store.put(key, value)
        if value is None:
            expected.pop(key, None)
        else:
            expected[key] = value
    assert dict(store.items()) == expected
    assert list(store.keys_from("", inclusive=True)) == sorted(expected)
    for key, _ in writes:
        assert store.get(key) == expected.get(key)
        assert list(store.keys_from(key, inclusive=False)) == sorted(k for k in expected if k > key)
        assert list(store.keys_from(key, inclusive=True)) == sorted(k for k in expected if k >= key)


def test_a_key_that_prefixes_another_is_found_and_ordered_before_it() -> None:
    store = SlotStore([("ab", "2"), ("a", "1"), ("a\x01", "3")])
    assert [store.get("a"), store.get("ab"), store.get("a\x01"), store.get("b")] == ["1", "2", "3", None]
    assert list(store.keys_from("", inclusive=True)) == ["a", "a\x01", "ab"]
    assert store.put("a", None) == (b"a\x001", None)
    assert list(store.items()) == [("a\x01", "3"), ("ab", "2")]


def test_a_scan_from_a_string_with_a_nul_starts_after_what_precedes_it() -> None:
    store = SlotStore([("a", "z"), ("a\x01", "1"), ("b", "2")])
    assert list(store.keys_from("a\0", inclusive=False)) == ["a\x01", "b"]
    assert list(store.keys_from("a\0zz", inclusive=True)) == ["a\x01", "b"]


def test_a_nul_in_a_key_is_refused() -> None:
    assert check_key("a\0b") == "key 'a\\x00b' contains a NUL character"
