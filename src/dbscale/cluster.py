"""Cluster: the object an application holds (``Cluster`` for blocking code, ``AsyncCluster`` for asyncio).

``AsyncCluster`` (``cluster_aio.py``) is the source; ``Cluster`` (``cluster_sync.py``) is generated
from it by ``scripts/unasync.py``; what they share is in ``cluster_base.py``.
"""

from dbscale.cluster_aio import AsyncCluster
from dbscale.cluster_base import ClusterBase, engine_options
from dbscale.cluster_sync import Cluster

__all__ = ["AsyncCluster", "Cluster", "ClusterBase", "engine_options"]
