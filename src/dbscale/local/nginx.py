"""The HTTP edge of the local topology: Debian's nginx with ``proxy_cache`` in front of an application.

nginx stands in for a CDN: it keeps responses as long as their ``Cache-Control`` allows, answers
``If-None-Match`` itself for what it keeps, and bypasses its cache for a request carrying the purge
secret (``X-Dbscale-Purge``), whose answer from the application (``X-Accel-Expires: @1``) replaces
the kept copy by an expired one — a purge without the ``proxy_cache_purge`` module (see
:mod:`dbscale.integrations.edge`). It runs as the service user, like PostgreSQL and PgBouncer, with
every path (pid, logs, cache, temp files) inside its own directory.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dbscale.errors import LocalTopologyError
from dbscale.local import processes
from dbscale.local.ports import port_accepts
from dbscale.local.runtime import log_tail, make_private_dir, write_owned
from dbscale.local.service_user import ServiceUser, run

NGINX = Path("/usr/sbin/nginx")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class EdgeConfig:
    """Where nginx listens, the application it fronts, the purge secret and its directory."""

    directory: Path
    listen_port: int
    app_port: int
    purge_secret: str
    max_size: str = "64m"

    @property
    def url(self) -> str:
        """The edge's base URL."""
        return f"http://{HOST}:{self.listen_port}"


def render_conf(edge: EdgeConfig) -> str:
    """The ``nginx.conf``: one server, ``proxy_cache`` keyed by URL, purge requests bypass the cache."""
    d = edge.directory
    return f"""# Written by dbscale.local: the HTTP edge (CDN stand-in).
worker_processes 1;
daemon on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=dbscale_edge:4m max_size={edge.max_size} inactive=10m use_temp_path=off;
    map $http_x_dbscale_purge $dbscale_purge {{
        default 0;
        "{edge.purge_secret}" 1;
    }}
    upstream app {{
        server {HOST}:{edge.app_port};
        keepalive 16;
    }}
    server {{
        listen {HOST}:{edge.listen_port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache dbscale_edge;
            proxy_cache_key $scheme$host$request_uri;
            proxy_cache_bypass $dbscale_purge;
            proxy_cache_lock on;
            proxy_cache_revalidate on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


def pid(edge: EdgeConfig) -> int | None:
    """The live nginx master pid, or None."""
    return processes.live_pid_from_file(edge.directory / "nginx.pid", NGINX)


def start(edge: EdgeConfig, user: ServiceUser, timeout: float = 30.0) -> None:
    """Start nginx (no-op if running) and return once it accepts connections."""
    if not NGINX.exists():
        raise LocalTopologyError(f"nginx not found at {NGINX}: apt-get install nginx (or run scripts/bootstrap.sh)")
    if pid(edge) is not None:
        return
    make_private_dir(edge.directory, user)
    for sub in ("tmp", "cache"):
        make_private_dir(edge.directory / sub, user)
    conf = edge.directory / "nginx.conf"
    write_owned(conf, render_conf(edge), user)
    (edge.directory / "nginx.pid").unlink(missing_ok=True)
    argv: list[str | Path] = [NGINX, "-p", edge.directory, "-c", conf, "-e", edge.directory / "error.log"]
    run(argv, user=user, cwd=edge.directory, what="starting nginx (the edge)")
    deadline = time.monotonic() + timeout
    while pid(edge) is None or not port_accepts(edge.listen_port):
        if time.monotonic() >= deadline:
            raise LocalTopologyError(
                f"nginx on port {edge.listen_port} did not start within {timeout:.0f}s\n"
                f"{log_tail(edge.directory / 'error.log')}"
            )
        time.sleep(0.05)


def stop(edge: EdgeConfig, timeout: float = 10.0) -> None:
    """Stop nginx (SIGTERM: fast shutdown) and wait until it is gone."""
    processes.stop_main("nginx", pid(edge), timeout)


def clear_cache(edge: EdgeConfig) -> None:
    """Forget every kept response (nginx must be stopped)."""
    shutil.rmtree(edge.directory / "cache", ignore_errors=True)
