"""Sharding benchmark: placement lookups per second, dbscale's strategies next to uhashring and the textbook.

    python benchmarks/sharding.py                  # lookups, then fan-out on a throwaway topology
    python benchmarks/sharding.py --no-fanout      # lookups only (no servers)
    python benchmarks/sharding.py --config dbscale.toml   # fan-out on groups main, shard0..2 of that file

Lookups need no servers (placement is pure). Every case looks up the same 1,000 string keys on 10
nodes. The cases are interleaved: every round times a batch of each case, in alternating order
(forward, then reversed), and the table shows the median per lookup over all rounds, so machine
noise hits every case alike. Rings: dbscale ``HashRing`` (160 points per node, bisect), in
default and ketama mode; ``uhashring.HashRing`` in ketama mode (40 digests x 4 = 160 points) and
default mode (160 vnodes); and the textbook's ring (10 nodes x 100 vnodes, sorted points walked
linearly per lookup). Targets (issue 11): dbscale's ring >= 3x the linear-scan ring and >= 1x
uhashring. Before timing, dbscale's ketama ring is checked to place every key as uhashring's does.
Then the fan-out latency table (``_fanout.py``): the page "latest 20 orders" and an
aggregate across 2 and 3 shard groups through ``cluster.fanout`` vs the same query on one node.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uhashring

from dbscale.sharding import HashMod, HashRing, JumpHash, Range

NODES = [f"shard{i}" for i in range(10)]
KEYS = [f"user:{i}" for i in range(1000)]
INT_KEYS = list(range(0, 10_000_000, 10_000))


class TextbookRing:
    """The consistent-hash ring as usually taught: md5 points, a linear walk per lookup."""

    def __init__(self, nodes: list[str], vnodes: int = 100) -> None:
        self.ring: dict[int, str] = {}
        self.sorted_keys: list[int] = []
        for node in nodes:
            for i in range(vnodes):
                h = self._hash(f"{node}:{i}")
                self.ring[h] = node
                self.sorted_keys.append(h)
        self.sorted_keys.sort()

    @staticmethod
    def _hash(key: str) -> int:
        return int(hashlib.md5(key.encode()).hexdigest(), 16)

    def get_node(self, key: Any) -> str:
        h = self._hash(str(key))
        for point in self.sorted_keys:
            if h <= point:
                return self.ring[point]
        return self.ring[self.sorted_keys[0]]


def textbook_mod(key: Any, nodes: list[str] = NODES) -> str:
    return nodes[int(hashlib.md5(str(key).encode()).hexdigest(), 16) % len(nodes)]


def interleaved(cases: dict[str, Callable[[], Any]], *, per_batch: int, rounds: int) -> list[tuple[str, float]]:
    """Median seconds per lookup of each case; each round runs a batch of every case, order alternating."""
    for fn in cases.values():
        fn()
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            fn = cases[name]
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / per_batch)
    return [(name, statistics.median(times[name])) for name in names]


RING = "dbscale HashRing (160 vnodes, bisect)"
RING_KETAMA = "dbscale HashRing ketama=True"
U_KETAMA = "uhashring ketama (hash_fn='ketama')"
U_DEFAULT = "uhashring default (160 vnodes)"
TEXTBOOK = "textbook ring, linear scan (10 x 100 vnodes)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, default=None, help="fan-out on this topology (groups main, shard0..2)")
    parser.add_argument("--iterations", type=int, default=200, help="interleaved fan-out runs per path")
    parser.add_argument("--no-fanout", action="store_true", help="lookups only")
    args = parser.parse_args()
    status = lookups()
    if not args.no_fanout:
        from _fanout import run_fanout

        print()
        run_fanout(args.config, args.iterations)
    return status


def lookups() -> int:
    ring = HashRing(NODES)
    ketama = HashRing(NODES, ketama=True)
    u_ketama = uhashring.HashRing(NODES, hash_fn="ketama")
    u_default = uhashring.HashRing(NODES)
    textbook = TextbookRing(NODES)
    jump, mod = JumpHash(NODES), HashMod(NODES)
    ranges = Range([(i * 1_000_000, (i + 1) * 1_000_000, n) for i, n in enumerate(NODES)])
    if [ketama.node_for(k) for k in KEYS] != [u_ketama.get_node(k) for k in KEYS]:
        raise SystemExit("dbscale ketama ring disagrees with uhashring")

    def batch(fn: Callable[[Any], Any], keys: list[Any] = KEYS) -> Callable[[], Any]:
        return lambda: [fn(k) for k in keys]

    rows = interleaved(
        {
            RING: batch(ring.node_for),
            RING_KETAMA: batch(ketama.node_for),
            "dbscale JumpHash": batch(jump.node_for),
            "dbscale HashMod (md5 mod N)": batch(mod.node_for),
            "dbscale Range (int keys, bisect)": batch(ranges.node_for, INT_KEYS),
            U_KETAMA: batch(u_ketama.get_node),
            U_DEFAULT: batch(u_default.get_node),
            "textbook md5 mod N": batch(textbook_mod),
            TEXTBOOK: batch(textbook.get_node),
        },
        per_batch=len(KEYS),
        rounds=41,
    )
    d = dict(rows)
    print("| strategy | median per lookup | lookups/s | speed vs textbook linear ring |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e6:.2f} µs | {1 / seconds:,.0f} | {d[TEXTBOOK] / seconds:.1f}x |")
    print()
    checks = [
        (f"{RING} vs {TEXTBOOK}", d[TEXTBOOK] / d[RING], 3.0),
        (f"{RING} vs {U_KETAMA}", d[U_KETAMA] / d[RING], 1.0),
        (f"{RING} vs {U_DEFAULT}", d[U_DEFAULT] / d[RING], 1.0),
        (f"{RING_KETAMA} vs {U_KETAMA}", d[U_KETAMA] / d[RING_KETAMA], 1.0),
    ]
    missed = False
    for label, speedup, target in checks:
        ok = speedup >= target
        missed |= not ok
        print(f"- {label}: {speedup:.1f}x faster (target >= {target:g}x): {'ok' if ok else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
