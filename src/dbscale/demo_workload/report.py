"""The workload demo's outputs: a rich table for the terminal, and an HTML report with charts and PNGs.

Charts are drawn with matplotlib: inline SVG in ``index.html`` (one file, opens anywhere, no
JavaScript) and the same charts as PNG files beside it.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.table import Table

from dbscale.demo_workload.layers import LAYERS
from dbscale.demo_workload.runner import Result
from dbscale.demo_workload.ycsb import WORKLOADS


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def speedup(results: Sequence[Result], result: Result) -> float:
    """``result``'s throughput over the primary-only throughput of the same workload."""
    base = next(r for r in results if r.workload == result.workload and r.layer == LAYERS[0])
    return result.throughput / base.throughput if base.throughput else 0.0


def rows(results: Sequence[Result]) -> list[list[str]]:
    """The report's rows as text (terminal table and HTML table share them)."""
    out = []
    for r in results:
        out.append(
            [
                r.workload,
                r.layer,
                f"{r.throughput:,.0f}",
                f"{speedup(results, r):.1f}×",
                _ms(r.p50),
                _ms(r.p99),
                _pct(r.hit_rate),
                f"{r.db_per_op:.3f}",
                _pct(r.primary_cpu),
                str(r.errors),
            ]
        )
    return out


HEADERS = (
    "workload",
    "layers",
    "ops/s",
    "vs primary",
    "p50",
    "p99",
    "hit rate",
    "DB queries/req",
    "primary CPU",
    "errors",
)


def results_table(results: Sequence[Result], title: str) -> Table:
    """The terminal table."""
    table = Table(title=title)
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right")
    for row in rows(results):
        table.add_row(*row)
    return table


def _chart(results: Sequence[Result], value: Callable[[Result], float], ylabel: str, log: bool) -> object:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    width = 0.8 / len(LAYERS)
    names = [w.name for w in WORKLOADS if any(r.workload == w.name for r in results)]
    for i, layer in enumerate(LAYERS):
        xs, ys = [], []
        for j, name in enumerate(names):
            for r in results:
                if r.workload == name and r.layer == layer:
                    xs.append(j + (i - (len(LAYERS) - 1) / 2) * width)
                    ys.append(max(value(r), 1e-9) if log else value(r))
        ax.bar(xs, ys, width, label=layer)
    ax.set_xticks(range(len(names)), [f"workload {n}" for n in names])
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize="small", ncols=len(LAYERS), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


CHARTS: tuple[tuple[str, str, Callable[[Result], float], bool], ...] = (
    ("throughput", "operations per second (log)", lambda r: r.throughput, True),
    ("db-queries", "database queries per request", lambda r: r.db_per_op, False),
    ("p99", "p99 latency, ms (log)", lambda r: r.p99 * 1e3, True),
)


def write_report(results: Sequence[Result], directory: Path, summary: str) -> Path:
    """Write ``index.html`` (inline SVG charts, the table) and one PNG per chart; return the HTML path."""
    from matplotlib import pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    figures = []
    for name, ylabel, value, log in CHARTS:
        fig = _chart(results, value, ylabel, log)
        fig.savefig(directory / f"{name}.png")  # type: ignore[attr-defined]
        svg = io.StringIO()
        fig.savefig(svg, format="svg")  # type: ignore[attr-defined]
        plt.close(fig)  # type: ignore[arg-type]
        body = svg.getvalue()
        body = body[body.index("<svg") :]
        figures.append(
            f'<figure class="chart" id="chart-{name}"><figcaption>{html.escape(ylabel)} '
            f'(<a href="{name}.png">PNG</a>)</figcaption>{body}</figure>'
        )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows(results))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dbscale workload report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:nth-child(-n+2), th:nth-child(-n+2) {{ text-align: left; }}
figure.chart {{ margin: 1.5em 0; }} figure.chart svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>dbscale: what each layer buys</h1>
<p>{html.escape(summary)}</p>
<table><thead><tr>{head}</tr></thead><tbody>{table}</tbody></table>
{"".join(figures)}
</body></html>
"""
    path = directory / "index.html"
    path.write_text(page)
    return path
