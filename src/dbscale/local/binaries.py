"""Locate the server binaries the local topology needs, with install hints when missing."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from dbscale.errors import MissingBinaryError

#: Debian package that provides each binary.
PACKAGES: dict[str, str] = {
    "initdb": "postgresql-15",
    "pg_ctl": "postgresql-15",
    "pg_basebackup": "postgresql-15",
    "postgres": "postgresql-15",
    "redis-server": "redis-server",
    "pgbouncer": "pgbouncer",
    "patroni": "patroni",
    "etcd": "etcd-server",
    "redis-cli": "redis-tools",
}

_PG_GLOB = "/usr/lib/postgresql/*/bin"
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def missing_binary_message(name: str) -> str:
    """The one-line error for a binary that cannot be found."""
    package = PACKAGES.get(name, name)
    return f"{name} not found (looked in pg_config --bindir, {_PG_GLOB} and PATH): apt-get install {package}"


def _pg_version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit()) or (0,)


def postgres_bindirs() -> list[Path]:
    """Candidate PostgreSQL bin directories, best first."""
    dirs: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            dirs.append(Path(out))
    dirs.extend(Path(p) for p in sorted(glob.glob(_PG_GLOB), key=_pg_version_key, reverse=True))
    return dirs


def find_binary(name: str, search_dirs: list[Path] | None = None) -> Path:
    """Find ``name`` in ``search_dirs``, then PATH and the sbin directories, else raise."""
    for directory in search_dirs or []:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_SBIN_DIRS)
    found = shutil.which(name, path=path)
    if found:
        return Path(found)
    raise MissingBinaryError(missing_binary_message(name))


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every server binary the local topology runs."""

    initdb: Path
    pg_ctl: Path
    pg_basebackup: Path
    postgres: Path
    redis_server: Path
    pgbouncer: Path | None


@cache
def _find_all(need_pgbouncer: bool) -> Binaries:
    pg_dirs = postgres_bindirs()
    # Use the directory that holds ``postgres`` for every PostgreSQL tool, so versions match.
    postgres = find_binary("postgres", pg_dirs)
    pg_dir = [postgres.parent]
    return Binaries(
        initdb=find_binary("initdb", pg_dir),
        pg_ctl=find_binary("pg_ctl", pg_dir),
        pg_basebackup=find_binary("pg_basebackup", pg_dir),
        postgres=postgres,
        redis_server=find_binary("redis-server"),
        pgbouncer=find_binary("pgbouncer") if need_pgbouncer else None,
    )


def find_binaries(pgbouncer: bool) -> Binaries:
    """Locate every binary; PgBouncer only when ``pgbouncer`` is true."""
    return _find_all(pgbouncer)
