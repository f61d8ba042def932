"""Index advice: candidates from the SQL, proven with HypoPG, chosen for the whole workload.

``advise`` (sync, :mod:`dbscale.advisor.shell`) and ``advise_async`` (:mod:`dbscale.advisor.aio`) are
the I/O shells; :mod:`~dbscale.advisor.candidates` and :mod:`~dbscale.advisor.select` are the pure core.
"""

from dbscale.advisor.aio import advise as advise_async
from dbscale.advisor.model import Advice, IndexColumn, IndexSpec, Measurement, Query, Recommendation
from dbscale.advisor.shell import advise

__all__ = ["Advice", "IndexColumn", "IndexSpec", "Measurement", "Query", "Recommendation", "advise", "advise_async"]
