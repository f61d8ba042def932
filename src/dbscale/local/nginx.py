"""The HTTP edge of the local topology: Debian's nginx with ``proxy_cache`` in front of an application.

nginx stands in for a CDN: it keeps responses as long as their ``Cache-Control`` allows, answers
``If-None-Match`` itself for what it keeps, and bypasses its cache for a request carrying the purge
secret (``X-Dbscale-Purge``), whose answer from the application (``X-Accel-Expires: @1``) replaces
the kept copy by an expired one — a purge without the ``proxy_cache_purge`` module (see
:mod:`dbscale.integrations.edge`). It runs as the service user, like PostgreSQL and PgBouncer, with
every path (pid, logs, cache, temp files) inside its own directory.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dbscale.errors import LocalTopologyError
from dbscale.local import processes
from dbscale.local.ports import free_ports, port_accepts
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


# ---------------------------------------------------------------------------- `dbscale up --edge`

EDGE_DIR = "edge"
WORKLOAD_EDGE_DIR = "workload-edge"  # the workload demo's own nginx (stopped by the demo, or by `down`)
APP_MODULE = "dbscale.demo_workload.edge_app"


def _app_pid(directory: Path) -> int | None:
    recorded = processes.read_pidfile(directory / "app.pid")
    if recorded is None or not processes.is_alive(recorded):
        return None
    try:
        cmdline = (Path("/proc") / str(recorded) / "cmdline").read_bytes()
    except OSError:
        return None
    return recorded if APP_MODULE.encode() in cmdline else None


def edge_config(state_dir: Path) -> EdgeConfig:
    """The edge of the topology in ``state_dir``: ports and secret chosen once, kept in ``edge/edge.json``."""
    directory = state_dir / EDGE_DIR
    record = directory / "edge.json"
    if record.is_file():
        data = json.loads(record.read_text())
    else:
        listen, app = free_ports(2)
        data = {"listen_port": listen, "app_port": app, "purge_secret": secrets.token_hex(16)}
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_owned(record, json.dumps(data), None)
    return EdgeConfig(directory, int(data["listen_port"]), int(data["app_port"]), str(data["purge_secret"]))


def start_edge(state_dir: Path, config_path: Path, user: ServiceUser, timeout: float = 30.0) -> EdgeConfig:
    """Start the demo app (``GET /users/<id>``) behind nginx, unless they run already; return the edge."""
    edge = edge_config(state_dir)
    if _app_pid(edge.directory) is None:
        log = (edge.directory / "app.log").open("ab")
        argv = [sys.executable, "-m", APP_MODULE, "--config", str(config_path), "--port", str(edge.app_port)]
        argv += ["--secret", edge.purge_secret, "--edge-url", edge.url]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        (edge.directory / "app.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while not port_accepts(edge.app_port):
            if proc.poll() is not None or time.monotonic() >= deadline:
                raise LocalTopologyError(
                    f"the edge demo app did not start on port {edge.app_port}\n{log_tail(edge.directory / 'app.log')}"
                )
            time.sleep(0.05)
    start(edge, user, timeout)
    return edge


def stop_edge(state_dir: Path) -> None:
    """Stop every nginx of ``state_dir`` (``up --edge``'s and an interrupted workload demo's) and the demo app."""
    for name in (EDGE_DIR, WORKLOAD_EDGE_DIR):
        processes.stop_main("nginx", processes.live_pid_from_file(state_dir / name / "nginx.pid", NGINX), 10.0)
    processes.stop_main("edge demo app", _app_pid(state_dir / EDGE_DIR), 10.0)
