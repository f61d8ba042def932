"""The pure decisions of write-through/write-behind: coalescing, batch plans, SQL shapes, commit hooks."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.cache.writes.policy import (
    DELETE,
    SAVE,
    SAVE_SHA,
    Change,
    TableSpec,
    cache_key,
    coalesce,
    decode_entries,
    decode_entry,
    group_rows,
    pack_save,
    pack_saves,
    pack_wait,
    parse_stream_id,
    plan_batch,
    save_command_parts,
    upsert_params,
)
from dbscale.errors import NotInTransaction
from dbscale.routing.context import CommitHooks, arun_hooks, on_commit, run_hooks

ops = st.lists(st.tuples(st.integers(0, 5), st.sampled_from([SAVE, DELETE]), st.binary(max_size=3)), max_size=40)


def _changes(items: list[tuple[int, str, bytes]]) -> list[Change]:
    return [Change(f"{1000 + i // 3}-{i % 3}", f"k{k}", op, data) for i, (k, op, data) in enumerate(items)]


@given(ops)
def test_coalesce_keeps_the_last_change_of_each_key_in_stream_order(items: list[tuple[int, str, bytes]]) -> None:
    changes = _changes(items)
    shuffled = list(reversed(changes))  # the input order does not matter: stream ids do
    result = coalesce(shuffled)
    expected: dict[str, Change] = {}
    for c in changes:
        expected[c.key] = c
    assert {c.key: c for c in result} == expected
    assert [parse_stream_id(c.id) for c in result] == sorted(parse_stream_id(c.id) for c in result)


@given(ops, st.integers(0, 45))
def test_plan_batch_skips_what_the_checkpoint_covers(items: list[tuple[int, str, bytes]], cut: int) -> None:
    changes = _changes(items)
    applied = changes[cut - 1].id if 0 < cut <= len(changes) else "0-0"
    batch = plan_batch(changes, applied)
    fresh = [c for c in changes if parse_stream_id(c.id) > parse_stream_id(applied)]
    assert batch.ids == [c.id for c in changes]  # everything is acknowledged
    assert batch.skipped == len(changes) - len(fresh)
    assert batch.apply == coalesce(fresh)
    assert batch.last_id == (fresh[-1].id if fresh else None)


def test_redelivered_batch_plans_nothing() -> None:
    changes = _changes([(1, SAVE, b"a"), (2, SAVE, b"b")])
    batch = plan_batch(changes, changes[-1].id)
    assert batch.apply == [] and batch.last_id is None and batch.skipped == 2


def test_stream_ids_compare_numerically() -> None:
    assert parse_stream_id("10-0") > parse_stream_id("9-99")
    assert parse_stream_id("5-10") > parse_stream_id("5-9")


@given(
    st.lists(st.tuples(st.text(max_size=20), st.sampled_from([SAVE, DELETE]), st.binary(max_size=300)), min_size=1),
    st.integers(1, 10**9),
)
def test_packed_saves_are_what_redis_py_packs(saves: list[tuple[str, str, bytes]], ttl_ms: int) -> None:
    from redis.connection import PythonRespSerializer

    def encode(value: object) -> bytes:  # redis-py's Encoder for a client without decode_responses
        return value if isinstance(value, bytes) else str(value).encode()

    packer = PythonRespSerializer(6000, encode)
    stream = "ns:wb:{t\u00e9}"
    entries = ["ns:w:t:{" + key + "}" for key, _, _ in saves]
    args = [arg for save in saves for arg in save]
    want = b"".join(packer.pack("EVALSHA", SAVE_SHA, len(saves) + 1, stream, *entries, ttl_ms, *args))
    packed = [pack_save(entry, *save) for entry, save in zip(entries, saves, strict=True)]
    assert pack_saves(save_command_parts(stream, ttl_ms), packed) == want
    assert pack_wait(2, 150) == b"".join(packer.pack("WAIT", 2, 150))


def test_decode_entries_from_the_raw_xreadgroup_reply() -> None:
    raw = [
        [
            b"ns:wb:{t}",
            [
                [b"1-0", [b"k", b"u:1", b"o", b"s", b"d", b"\x01row"]],
                [b"1-1", None],  # deleted while pending
                [b"2-0", [b"o", b"d", b"k", b"u:2", b"d", b"\x02"]],  # another field order
            ],
        ]
    ]
    want = [Change("1-0", "u:1", SAVE, b"\x01row"), Change("2-0", "u:2", DELETE, b"\x02")]
    assert decode_entries(raw) == want
    assert decode_entries({b"ns:wb:{t}": raw[0][1]}) == want  # RESP3: a map
    assert decode_entries(None) == [] and decode_entries([]) == []


def test_decode_entry_from_redis_reply() -> None:
    change = decode_entry(b"1-2", {b"k": b"user:1", b"o": b"s", b"d": b"{}"})
    assert change == Change("1-2", "user:1", SAVE, b"{}")


def test_table_spec_sql() -> None:
    spec = TableSpec.of("app.page views", "id")
    assert spec.qualified == '"app"."page views"'
    sql = spec.upsert_sql(["id", "n"], 2)
    assert sql == (
        'INSERT INTO "app"."page views" ("id", "n") VALUES (:p0_0, :p0_1), (:p1_0, :p1_1)'
        ' ON CONFLICT ("id") DO UPDATE SET "n" = EXCLUDED."n"'
    )
    assert spec.upsert_sql(["id"], 1).endswith("DO NOTHING")
    assert upsert_params(["id", "n"], [{"id": 1, "n": 2}, {"n": 4, "id": 3}]) == {
        "p0_0": 1,
        "p0_1": 2,
        "p1_0": 3,
        "p1_1": 4,
    }
    with pytest.raises(ValueError, match="key column"):
        spec.upsert_sql(["n"], 1)
    with pytest.raises(TypeError, match="table name"):
        TableSpec.of(42, "id")


def test_keys_groups_chunks() -> None:
    assert cache_key("user:{id}", "id", {"id": 7, "x": 1}) == "user:7"
    with pytest.raises(KeyError, match="lacks"):
        cache_key("user:{uid}", "id", {"id": 7})
    groups = group_rows([{"a": 1}, {"a": 2, "b": 1}, {"a": 3}])
    assert [(cols, len(rows)) for cols, rows in groups] == [(("a",), 2), (("a", "b"), 1)]


def test_commit_hooks_queue_only_inside_a_block_and_restore_the_outer_one() -> None:
    with pytest.raises(NotInTransaction):
        on_commit(lambda: None)
    ran: list[str] = []
    outer = CommitHooks()
    on_commit(lambda: ran.append("outer"))
    inner = CommitHooks()
    on_commit(lambda: ran.append("inner"))
    inner.close()
    run_hooks(inner.queued)
    on_commit(lambda: ran.append("outer2"))
    outer.close()
    run_hooks(outer.queued)
    assert ran == ["inner", "outer", "outer2"]


def test_an_async_hook_in_a_blocking_write_is_refused_and_awaited_in_an_async_one() -> None:
    async def hook() -> None:
        ran.append(1)

    ran: list[int] = []
    with pytest.raises(NotInTransaction, match="flavour"):
        run_hooks([hook])
    asyncio.run(arun_hooks([hook, lambda: ran.append(2)]))
    assert ran == [1, 2]


def test_wakeup_wakes_its_one_waiter_once_per_set() -> None:
    import threading

    from dbscale._compat import Wakeup

    wake = Wakeup()
    wake.set()
    wake.set()  # twice before the wait: one wake-up
    assert wake.wait()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(wake.wait()))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not woke  # the earlier sets were consumed: it blocks
    wake.set()
    waiter.join(5)
    assert woke == [True]


def test_risky_redis_settings_name_what_would_be_lost() -> None:
    from dbscale.cache.writes.policy import risky_redis_settings

    safe = {"appendonly": "yes", "maxmemory": "0", "maxmemory-policy": "allkeys-lru"}  # no limit: nothing evicted
    assert risky_redis_settings(safe) == []
    assert (
        risky_redis_settings({b"appendonly": b"yes", b"maxmemory": b"100mb", b"maxmemory-policy": b"noeviction"}) == []
    )
    assert risky_redis_settings({}) == []  # CONFIG answered nothing (renamed, restricted): nothing to say
    (aof,) = risky_redis_settings({"appendonly": "no"})
    assert "appendonly no" in aof and "lost" in aof
    (evicting,) = risky_redis_settings(
        {"appendonly": "yes", "maxmemory": "104857600", "maxmemory-policy": "allkeys-lru"}
    )
    assert "allkeys-lru" in evicting and "the stream itself" in evicting and "noeviction" in evicting
    (volatile,) = risky_redis_settings({"maxmemory": "1", "maxmemory-policy": "volatile-ttl"})
    assert "cache entries" in volatile and "older row" in volatile
    assert len(risky_redis_settings({"appendonly": "no", "maxmemory": "1", "maxmemory-policy": "allkeys-random"})) == 2
