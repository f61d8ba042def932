#!/usr/bin/env bash
# Install what dbscale needs on a fresh Debian 12 machine, idempotently:
#   system packages (PostgreSQL 15, Redis, PgBouncer, HypoPG, Patroni, etcd, nginx, chromium, tmux) when missing, then a venv with dbscale[dev,bench].
# As root it installs with apt-get; as an ordinary user it says which packages to install.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
[ -f /usr/share/postgresql/15/extension/pg_stat_statements.control ] || need+=(postgresql-contrib)
[ -f /usr/share/postgresql/15/extension/hypopg.control ] || need+=(postgresql-15-hypopg)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer)
# The HTTP edge (`dbscale up --edge`), the workload report's browser check, the `dbscale top` test.
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# `dbscale up --ha` (Patroni + etcd) and `dbscale up --redis-cluster N` (redis-cli --cluster create)
command -v patroni >/dev/null 2>&1 || need+=(patroni)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "bootstrap: installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        # Debian starts the packaged services where it can; dbscale runs its own on free ports.
    else
        echo "bootstrap: missing system packages: ${need[*]}" >&2
        echo "bootstrap: run: sudo apt-get install ${need[*]}" >&2
        exit 1
    fi
fi

stamp="$VENV/.dbscale-installed"
if [ ! -x "$VENV/bin/pip" ]; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        rm -rf "$VENV"
        if [ "$(id -u)" -eq 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv "$VENV"
        else
            echo "bootstrap: '$PYTHON -m venv' failed; run: sudo apt-get install python3-venv" >&2
            exit 1
        fi
    fi
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[dev,bench]"
    touch "$stamp"
fi
# An editable install leaves src/ without bytecode, and where PYTHONDONTWRITEBYTECODE is set Python never
# writes it: every CLI start would compile dbscale's modules again (a wheel install compiles them once).
"$VENV/bin/python" -m compileall -q src >/dev/null
