"""``MODULE:ATTR`` loading for ``dbscale project run | rebuild`` (no server needed)."""

from __future__ import annotations

import pytest

from dbscale import Cluster, ConfigError
from dbscale.cli_project import load_projector


def test_load_projector_from_a_factory_or_an_instance() -> None:
    with Cluster(primary="postgresql://app@127.0.0.1:1/app") as cluster:
        projector = load_projector("tests.integration.cqrs_app:users_projector", cluster)
        assert projector.name == "users_read" and projector.cluster is cluster
        assert projector.tables == ("users_read",)
        for bad in ("tests.integration.cqrs_app", "no.such.module:x", "tests.integration.cqrs_app:FIELDS"):
            with pytest.raises(ConfigError):
                load_projector(bad, cluster)
