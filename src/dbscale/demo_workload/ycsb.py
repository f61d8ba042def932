"""YCSB's workload mixes and its scrambled zipfian key chooser (pure: randomness is passed in).

The zipfian generator is YCSB's (``ZipfianGenerator``, after Gray et al., "Quickly generating
billion-record synthetic databases", SIGMOD 1994) with YCSB's constant 0.99; ``ScrambledZipfian``
hashes the rank with FNV-1a so the popular keys are spread over the key space instead of being the
smallest ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ZIPFIAN_CONSTANT = 0.99
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Workload:
    """A YCSB core workload: its letter, what it models, and the fraction of reads (the rest are updates)."""

    name: str
    title: str
    read_fraction: float

    def is_read(self, u: float) -> bool:
        """Whether the operation drawn with uniform ``u`` in [0, 1) is a read."""
        return u < self.read_fraction


WORKLOADS = (
    Workload("A", "update heavy (50/50)", 0.5),
    Workload("B", "read mostly (95/5)", 0.95),
    Workload("C", "read only", 1.0),
)


def fnv1a64(value: int) -> int:
    """FNV-1a over the 8 little-endian bytes of ``value`` (YCSB's ``fnvhash64``)."""
    h = _FNV_OFFSET
    for i in range(8):
        h ^= (value >> (8 * i)) & 0xFF
        h = (h * _FNV_PRIME) & _MASK
    return h


class Zipfian:
    """Ranks 0..n-1, rank 0 the most popular, P(rank i) proportional to 1/(i+1)^theta."""

    def __init__(self, n: int, theta: float = ZIPFIAN_CONSTANT) -> None:
        if n < 2:
            raise ValueError("Zipfian needs at least 2 items")
        self.n, self.theta = n, theta
        self.zetan = sum(1.0 / (i**theta) for i in range(1, n + 1))
        zeta2 = 1.0 + 0.5**theta
        self.alpha = 1.0 / (1.0 - theta)
        # n == 2: ranks 0 and 1 are the whole range and the formula below is never reached
        self.eta = 0.0 if n == 2 else (1.0 - (2.0 / n) ** (1.0 - theta)) / (1.0 - zeta2 / self.zetan)
        self._half_pow = 1.0 + 0.5**theta

    def rank(self, u: float) -> int:
        """The rank drawn with uniform ``u`` in [0, 1)."""
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < self._half_pow:
            return 1
        return min(self.n - 1, int(self.n * (self.eta * u - self.eta + 1.0) ** self.alpha))


class ScrambledZipfian:
    """Zipfian popularity over keys ``first..first+n-1``, the popular ones scattered by FNV-1a."""

    def __init__(self, n: int, first: int = 1) -> None:
        self.zipf, self.first = Zipfian(n), first

    def key(self, u: float) -> int:
        """The key drawn with uniform ``u`` in [0, 1)."""
        return self.first + fnv1a64(self.zipf.rank(u)) % self.zipf.n


def operations(
    workload: Workload, keys: ScrambledZipfian, rand: Callable[[], float], count: int
) -> list[tuple[bool, int]]:
    """``count`` operations ``(is_read, key)`` drawn with ``rand``."""
    return [(workload.is_read(rand()), keys.key(rand())) for _ in range(count)]
