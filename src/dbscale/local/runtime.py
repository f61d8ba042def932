"""What every node operation needs: binaries, the service user and the generated password."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dbscale.local.binaries import Binaries
from dbscale.local.service_user import ServiceUser


@dataclass(frozen=True)
class Runtime:
    """Binaries, the user PostgreSQL/PgBouncer run as, and the superuser password."""

    binaries: Binaries
    user: ServiceUser
    password: str


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.strip().splitlines()[-lines:]
    return f"last lines of {path}:\n" + "\n".join(tail)


def make_private_dir(path: Path, user: ServiceUser | None) -> None:
    """Create ``path`` (mode 0700), owned by ``user`` when given and we are root."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user is not None:
        user.own(path)


def write_owned(path: Path, text: str, user: ServiceUser | None, mode: int = 0o600) -> None:
    """Write a file readable by ``user`` (owned by it when we are root)."""
    path.write_text(text)
    path.chmod(mode)
    if user is not None:
        user.own(path)
