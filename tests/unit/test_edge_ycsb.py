"""Pure parts of the edge tier (ETags, If-None-Match, headers) and of the workload demo (YCSB mixes, zipfian keys)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from dbscale.demo_workload.ycsb import WORKLOADS, ScrambledZipfian, Zipfian, fnv1a64
from dbscale.integrations.edge import EdgePolicy, edge_headers, etag_of, if_none_match, respond, stored


def test_etag_is_strong_and_changes_with_the_body() -> None:
    a, b = etag_of(b"one"), etag_of(b"two")
    assert a.startswith('"') and a.endswith('"') and not a.startswith("W/")
    assert a != b and a == etag_of(b"one")


def test_if_none_match_lists_weak_forms_and_star() -> None:
    etag = etag_of(b"x")
    assert if_none_match(etag, etag)
    assert if_none_match(f'"other", W/{etag}', etag)
    assert if_none_match("*", etag)
    assert not if_none_match(None, etag) and not if_none_match('"other"', etag)


def test_edge_headers_carry_tags_both_ways() -> None:
    headers = dict(edge_headers(EdgePolicy(max_age=10, stale_while_revalidate=5), '"e"', ["user:1", "org:2"]))
    assert headers["Cache-Control"] == "public, max-age=10, stale-while-revalidate=5"
    assert headers["Surrogate-Key"] == "user:1 org:2" and headers["Cache-Tag"] == "user:1,org:2"


def test_stored_response_round_trip_and_304() -> None:
    policy = EdgePolicy()
    entry = stored(200, [("Content-Type", "text/plain"), ("Content-Length", "5"), ("ETag", '"x"')], b"hello")
    status, headers, body = respond(policy, entry, ["t"], None, head=False)
    assert (status, body) == (200, b"hello")
    assert dict(headers)["Content-Length"] == "5" and dict(headers)["ETag"] == etag_of(b"hello")
    assert respond(policy, entry, ["t"], etag_of(b"hello"), head=False)[::2] == (304, b"")
    assert respond(policy, entry, ["t"], None, head=True)[2] == b""


def test_purge_needs_the_secret() -> None:
    assert not EdgePolicy().is_purge("anything")
    policy = EdgePolicy(purge_secret="s3cret")
    assert policy.is_purge("s3cret") and not policy.is_purge("wrong") and not policy.is_purge(None)


def test_workload_mixes() -> None:
    assert [w.read_fraction for w in WORKLOADS] == [0.5, 0.95, 1.0]
    c = WORKLOADS[2]
    assert all(c.is_read(u / 100) for u in range(100))


@given(st.integers(min_value=2, max_value=500), st.floats(min_value=0.0, max_value=0.999999))
def test_zipfian_ranks_stay_in_range(n: int, u: float) -> None:
    assert 0 <= Zipfian(n).rank(u) < n
    assert 1 <= ScrambledZipfian(n).key(u) <= n


def test_zipfian_is_skewed_and_scrambled() -> None:
    keys = ScrambledZipfian(10_000)
    rng = random.Random(3)
    counts = Counter(keys.key(rng.random()) for _ in range(50_000))
    top = counts.most_common(10)
    assert top[0][1] > 50 * (50_000 / 10_000)  # the hottest key far above uniform
    assert sum(c for _, c in top) > 0.2 * 50_000
    assert top[0][0] != 1  # scrambled: the hottest key is not the smallest id
    assert fnv1a64(0) != fnv1a64(1)
