"""Write-through, write-behind and transactional invalidation over the cache and ``cluster.write()``.

Reached through the cache of a cluster: ``cluster.cache.write_through(...)``,
``cluster.cache.write_behind(...)``, ``cluster.cache.invalidate_on_commit(...)``. The decisions are
in :mod:`.policy` (pure); ``through_aio.py`` and ``behind_aio.py`` are the asyncio shells, and
``through.py`` and ``behind.py`` their generated blocking twins.
"""
