"""Run PostgreSQL and PgBouncer as an unprivileged user.

Both servers refuse to run as root. When the current process is root they run as the
``postgres`` system user through ``runuser``, and the files they write are owned by that user; as an
ordinary user they simply run as that user. Because they need to reach their files, every ancestor
of the state directory must be searchable by the service user: :func:`check_traversable` says which
directory blocks it and how to fix that.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbscale.errors import LocalTopologyError

SERVICE_USER = "postgres"


@dataclass(frozen=True)
class ServiceUser:
    """Who the PostgreSQL and PgBouncer processes run as."""

    name: str
    uid: int
    gids: frozenset[int]
    switch: bool  # True when commands must go through ``runuser``

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command as this user."""
        return ["runuser", "-u", self.name, "--"] if self.switch else []

    def own(self, path: Path) -> None:
        """Give ``path`` to this user (only needed, and only possible, when running as root)."""
        if self.switch:
            primary_gid = pwd.getpwnam(self.name).pw_gid
            os.chown(path, self.uid, primary_gid)


def current_service_user() -> ServiceUser:
    """The service user for this process: ``postgres`` when root, otherwise ourselves."""
    if os.geteuid() != 0:
        return ServiceUser(
            name=pwd.getpwuid(os.geteuid()).pw_name,
            uid=os.geteuid(),
            gids=frozenset(os.getgroups()) | {os.getegid()},
            switch=False,
        )
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise LocalTopologyError(
            f"running as root, but there is no {SERVICE_USER!r} system user to run PostgreSQL and "
            "PgBouncer as: apt-get install postgresql-15 (it creates the user), or run as an ordinary user"
        ) from None
    gids = set(os.getgrouplist(SERVICE_USER, entry.pw_gid))
    return ServiceUser(name=SERVICE_USER, uid=entry.pw_uid, gids=frozenset(gids), switch=True)


def blocking_directory(
    path: Path, uid: int, gids: frozenset[int], stat_fn: Callable[[Path], os.stat_result] = os.stat
) -> Path | None:
    """The first directory among ``path`` and its ancestors that ``uid`` cannot search, if any."""
    if uid == 0:
        return None
    for directory in [*reversed(path.parents), path]:
        try:
            st = stat_fn(directory)
        except FileNotFoundError:
            return None  # will be created by us, with a searchable mode
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in gids:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return directory
    return None


def check_traversable(state_dir: Path, user: ServiceUser) -> None:
    """Raise a LocalTopologyError if ``user`` cannot reach into ``state_dir`` through its ancestors.

    The state directory itself is made searchable by :class:`LocalTopology`, so only its ancestors
    are checked.
    """
    if not user.switch:
        return
    blocked = blocking_directory(state_dir.resolve().parent, user.uid, user.gids)
    if blocked is not None:
        st = os.stat(blocked)
        raise LocalTopologyError(
            f"PostgreSQL and PgBouncer run as the {user.name!r} user, which cannot enter {blocked} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}), so it cannot use the state "
            f"directory {state_dir}. Choose a --state-dir outside it (e.g. under /tmp or the project "
            f"directory), or allow traversal with: chmod o+x {blocked}"
        )


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    user: ServiceUser,
    cwd: Path,
    log_path: Path,
    pidfile: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a server that does not daemonize itself (etcd, Patroni) as ``user``, in its own session.

    Output is appended to ``log_path``; the pid is written to ``pidfile`` (the server writes none)
    and returned. No ``runuser`` in between: the pid recorded is the server's own.
    """
    uid = gid = None
    if user.switch:
        entry = pwd.getpwnam(user.name)
        uid, gid = entry.pw_uid, entry.pw_gid
    with log_path.open("ab") as log:
        if user.switch:
            os.chown(log_path, user.uid, pwd.getpwnam(user.name).pw_gid)
        try:
            proc = subprocess.Popen(
                [os.fspath(a) for a in argv],
                cwd=cwd,
                env={**os.environ, "HOME": str(cwd), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of `dbscale up` must not reach the server
                user=uid,
                group=gid,
                extra_groups=[] if user.switch else None,
            )
        except OSError as exc:
            raise LocalTopologyError(f"cannot start {os.fspath(argv[0])}: {exc}") from exc
    child = int(proc.pid)
    pidfile.write_text(f"{child}\n")
    return child


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    user: ServiceUser | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    what: str = "",
) -> str:
    """Run a command (as ``user`` if given), returning its output; raise with the output on failure.

    Output goes to a temporary file rather than a pipe: a daemon that inherits the pipe would keep
    ``subprocess.run`` waiting until it exits.
    """
    full = [*(user.prefix() if user else []), *(os.fspath(a) for a in argv)]
    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            proc = subprocess.run(
                full,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LocalTopologyError(f"{what or full[0]} did not finish within {timeout:.0f}s") from None
        except FileNotFoundError as exc:
            raise LocalTopologyError(f"{what or full[0]}: cannot run {exc.filename}") from exc
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise LocalTopologyError(f"{what or full[0]} failed (exit {proc.returncode}):\n{tail}")
    return output
