"""``dbscale advise``: index advice for a workload, proven with HypoPG (and with ``--apply``, EXPLAIN ANALYZE)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dbscale.errors import ConfigError

if TYPE_CHECKING:  # imported where used: the CLI starts without the advisor (pglast) and rich
    from rich.console import Console

    from dbscale.advisor.model import Advice

DEFAULT_CONFIG = Path(".dbscale/dbscale.toml")


def _short(sql: str, width: int = 70) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _print(advice: Advice, console: Console) -> None:
    from rich.table import Table

    table = Table(title="recommended indexes (ranked by calls × estimated time saved)")
    for column in ("#", "index", "serves", "est. cost before → after"):
        table.add_column(column)
    for n, rec in enumerate(advice.indexes, 1):
        serves = "\n".join(_short(e.query.sql) for e in rec.serves)
        costs = "\n".join(f"{e.before:.0f} → {e.after:.0f} (-{e.gain:.1%})" for e in rec.serves)
        table.add_row(str(n), rec.index.ddl(), serves, costs)
    console.print(table)
    if not advice.indexes:
        console.print("no index pays for itself at this --min-gain")
    for title, findings in (
        ("already served by existing indexes", advice.served),
        ("write-heavy tables (index not recommended)", advice.write_heavy),
        ("unused indexes (idx_scan = 0)", advice.unused),
        ("duplicate or prefix-redundant indexes", advice.duplicate),
        ("queries not advised", advice.errors),
    ):
        if findings:
            console.print(f"[bold]{title}[/]")
            for f in findings:
                console.print(f"  {_short(f.subject, 60)}: {f.detail}")
    for m in advice.measurements:
        console.print(f"[bold]EXPLAIN (ANALYZE, BUFFERS)[/] {_short(m.sql, 100)}")
        console.print(f"  before: {m.before_ms:.3f} ms   after: {m.after_ms:.3f} ms   speedup: {m.speedup:.1f}×")
        console.print("  [dim]before:[/]\n    " + m.before_plan.replace("\n", "\n    "))
        console.print("  [dim]after:[/]\n    " + m.after_plan.replace("\n", "\n    "))


def advise(
    config: Annotated[Path, typer.Option("--config", help="The dbscale.toml of the topology.")] = DEFAULT_CONFIG,
    group: Annotated[str | None, typer.Option("--group", help="Group whose primary is advised (default main).")] = None,
    from_stats: Annotated[
        bool, typer.Option("--from-stats", help="Take the workload from pg_stat_statements.")
    ] = False,
    query: Annotated[list[str] | None, typer.Option("--query", help="A query to advise (repeatable).")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A .sql file of queries, separated by ';'.")] = None,
    min_gain: Annotated[
        float, typer.Option("--min-gain", help="Keep an index only if a query's estimated cost falls by this much.")
    ] = 0.3,
    apply: Annotated[
        bool, typer.Option("--apply", help="CREATE INDEX CONCURRENTLY on the primary; measure before and after.")
    ] = False,
    sql_out: Annotated[Path, typer.Option("--sql", help="Where to write the SQL file.")] = Path("dbscale-advice.sql"),
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Advise composite, sorted, covering and partial indexes for a workload, proven with HypoPG."""
    from dbscale.advisor import advise as run
    from dbscale.advisor.candidates import split_statements
    from dbscale.cluster import Cluster

    queries = list(query or [])
    if file is not None:
        try:
            queries.extend(split_statements(file.read_text()))
        except OSError as exc:
            raise ConfigError(f"cannot read --file {file}: {exc.strerror}") from None
    if not queries and not from_stats:
        raise ConfigError("nothing to advise: pass --from-stats, --query SQL or --file F.sql")
    if not 0 < min_gain < 1:
        raise ConfigError(f"--min-gain {min_gain}: must be between 0 and 1 (e.g. 0.3 for a 30% cost cut)")
    if not config.exists():
        raise ConfigError(f"no topology config at {config} (run `dbscale up` first, or pass --config FILE)")
    with Cluster.from_config(config) as cluster:
        advice = run(cluster, queries, from_stats=from_stats, group=group, min_gain=min_gain, apply=apply)
    if advice.indexes:
        sql_out.write_text(advice.sql())
    if as_json:
        print(json.dumps({**advice.as_dict(), "sql_file": str(sql_out) if advice.indexes else None}, indent=2))
        return
    from rich.console import Console

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    _print(advice, console)
    if advice.indexes:
        console.print(f"SQL written to [bold]{sql_out}[/]" + ("" if apply else " (--apply creates the indexes)"))


def register(app: typer.Typer) -> None:
    """Add ``dbscale advise`` to the CLI."""
    app.command("advise")(advise)
