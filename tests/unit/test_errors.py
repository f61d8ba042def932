"""One exception hierarchy: every exception class of the library lives in ``dbscale.errors`` under one root."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import dbscale
from dbscale import errors
from dbscale.cache.keys import CacheKeyError
from dbscale.cache.l2 import CacheUnavailable
from dbscale.routing.errors import InvalidCausalToken, PoolTimeout

SRC = Path(dbscale.__file__).resolve().parent


def test_every_error_descends_from_the_root_and_says_what_to_do() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(classes) == len(errors.__all__)
    for cls in classes:
        assert issubclass(cls, errors.DbscaleError), cls
        assert cls.__doc__ and cls.__doc__.strip(), cls


def test_no_exception_class_is_defined_outside_errors_py() -> None:
    """A class whose bases name an error (``...Error``, ``...Unavailable``, ``Exception`` …) belongs in errors.py.

    Private classes (``_HandlerFailed``) are internal control-flow signals that never reach a caller.
    """
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                names = {
                    b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                    for b in node.bases
                }
                if any(n.endswith(("Error", "Exception", "Unavailable", "Timeout", "Closed")) for n in names):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert offenders == []


def test_old_import_paths_still_work() -> None:
    assert CacheKeyError is errors.CacheKeyError
    assert CacheUnavailable is errors.CacheUnavailable
    assert InvalidCausalToken is errors.InvalidCausalToken
    assert PoolTimeout is errors.PoolTimeout


def test_a_closed_cluster_error_is_still_a_runtime_error() -> None:
    assert issubclass(errors.ClusterClosed, RuntimeError)
    assert dbscale.ClusterClosed is errors.ClusterClosed
