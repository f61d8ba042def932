"""ORM read sessions: the ``Session`` class behind ``cluster.session(write=False)``.

Theory of operation: a read session is bound to one routed read connection
(:class:`~dbscale.routing.router.ReadConnection` or its async twin), so it goes where ``read()`` would
(replica by policy, causal token honoured) and runs in the same read-only transaction. The read
connection listens to the session's ``do_orm_execute`` event and runs each ORM statement under the
one-retry rule until one has returned: a connection error before that rolls the session back (it
has loaded nothing yet), bans the node, rebinds the session to a connection on another eligible
node and runs the statement again. Once a statement has returned, the session stays on its node,
so everything it loads comes from one snapshot; later connection errors propagate.

Statements that bypass ``Session.execute`` (``session.connection()``, a flush) are not retried, and
asking for ``session.connection()`` ends the retry window, like ``ReadConnection.connection``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

#: ``session.info[NODE_KEY]``: the node a read session runs on (updated when a retry moved it).
NODE_KEY = "dbscale_node"


class ReadSession(Session):
    """The ``Session`` (or ``AsyncSession.sync_session``) of ``cluster.session(write=False)``."""

    dbscale_pin: Callable[[], None] | None = None

    def connection(self, *args: Any, **kw: Any) -> Connection:
        """The session's connection; statements run on it directly are not retried (ends the retry window)."""
        if self.dbscale_pin is not None:
            self.dbscale_pin()
        return super().connection(*args, **kw)


__all__ = ["NODE_KEY", "ReadSession"]
