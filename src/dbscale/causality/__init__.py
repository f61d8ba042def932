"""The cluster's side of lag-aware cache fills: :class:`~dbscale.cache.markers.Causality` for its cache.

:class:`AsyncClusterCausality` (``aio.py``) is the asyncio source; :class:`ClusterCausality`
(``sync.py``) is generated from it by ``scripts/unasync.py``; the shared part is ``base.py``.
"""

from dbscale.causality.aio import AsyncClusterCausality
from dbscale.causality.sync import ClusterCausality

__all__ = ["AsyncClusterCausality", "ClusterCausality"]
