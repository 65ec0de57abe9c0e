"""The evaluation report: a Markdown file and two PNG plots (matplotlib, Agg backend).

``report.md`` has the metric table (each first stage, its re-ranking, and published
references), the per-query latency distribution by stage (p50/p99/mean), joules per query with
the meter's method, first-stage versus re-ranking time and the index sizes.
``metrics.png`` plots the headline metric per system, ``latency.png`` the latency
distribution and the per-stage breakdown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tilde import __version__
from tilde.io import atomic_path, atomic_write_text

from .metrics import MEASURE_LABELS
from .pipeline import STAGES, StageTimes
from .references import Reference

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["Report", "SystemRow", "write_report"]


@dataclass(frozen=True)
class SystemRow:
    name: str  # e.g. "bm25" or "bm25 -> TILDEv2"
    kind: str  # "first stage" | "re-ranked"
    metrics: Mapping[str, float]
    first_stage: str = ""  # the first stage a re-ranked row starts from


@dataclass(frozen=True)
class Report:
    title: str
    dataset: str
    model: str
    metric_names: Sequence[str]
    rows: Sequence[SystemRow]
    references: Sequence[Reference] = ()
    timings: Mapping[str, StageTimes] = field(default_factory=dict)  # system name -> per-query stages
    index_bytes: Mapping[str, int] = field(default_factory=dict)  # label -> bytes on disk
    notes: Sequence[str] = ()


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def _metric_table(report: Report) -> list[str]:
    names = list(report.metric_names)
    head = "| system | kind | " + " | ".join(MEASURE_LABELS.get(n, n) for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for row in report.rows:
        cells = [_fmt(row.metrics[n]) if n in row.metrics else "" for n in names]
        lines.append(f"| {row.name} | {row.kind} | " + " | ".join(cells) + " |")
    for ref in report.references:
        cells = [_fmt(ref.value) if n == ref.metric else "" for n in names]
        if any(cells):
            lines.append(f"| {ref.system} | published | " + " | ".join(cells) + " |")
    return lines


def _latency_table(report: Report) -> list[str]:
    lines = ["| system | stage | p50 ms | p99 ms | mean ms |", "|---|---|---|---|---|"]
    for name, t in report.timings.items():
        for stage in [*STAGES, "total"]:
            values = t.total_ms if stage == "total" else t.ms.get(stage)
            if not values:
                continue
            mean = sum(values) / len(values)
            lines.append(f"| {name} | {stage} | {t.p(stage, 50):.3f} | {t.p(stage, 99):.3f} | {mean:.3f} |")
    return lines


def _energy_lines(report: Report) -> list[str]:
    lines = ["| system | queries | joules/query | first stage ms/query | re-ranking ms/query | meter |",
             "|---|---|---|---|---|---|"]
    for name, t in report.timings.items():
        n = max(t.queries, 1)
        first = sum(t.ms.get("first_stage", [])) / n
        rerank = sum(sum(t.ms.get(s, [])) for s in STAGES[1:]) / n
        first_cell = f"{first:.3f}" if t.ms.get("first_stage") else "(given run)"
        lines.append(f"| {name} | {t.queries} | {t.joules_per_query:.6f} | {first_cell} | {rerank:.3f} | {t.method} |")
    return lines


def _markdown(report: Report, plots: Sequence[str]) -> str:
    out = [f"# {report.title}", "", f"- dataset: {report.dataset}", f"- model: {report.model}",
           f"- tilde {__version__}", ""]
    out += ["## Effectiveness", "", *_metric_table(report), ""]
    if report.references:
        out += ["Published figures:", ""]
        out += [f"- {r.system}, {MEASURE_LABELS.get(r.metric, r.metric)} {r.value:.4f}: {r.source}"
                for r in report.references]
        out.append("")
    if report.timings:
        out += ["## Per-query latency by stage", "", *_latency_table(report), ""]
        out += ["## Energy, first stage vs re-ranking", "", *_energy_lines(report), "",
                "Energy is measured over the same spans as the times; the meter column names the method "
                "(`rapl`: package energy counters; `cpu-time*W/core`: CPU time times an assumed power, an estimate).",
                ""]
    if report.index_bytes:
        out += ["## Index size", "", "| index | MB |", "|---|---|"]
        out += [f"| {label} | {size / 1e6:.2f} |" for label, size in report.index_bytes.items()]
        out.append("")
    if report.notes:
        out += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    out += ["## Plots", "", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(out)


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def _metrics_plot(report: Report, path: Path) -> None:
    from matplotlib.figure import Figure

    metric = report.metric_names[0]
    firsts = [r for r in report.rows if r.kind == "first stage"]
    reranked = {r.first_stage: r for r in report.rows if r.kind == "re-ranked"}
    labels = [r.name for r in firsts] or [r.name for r in report.rows]
    fig = Figure(figsize=(max(5.0, 1.3 * len(labels) + 2), 3.8))
    ax = fig.subplots()
    width = 0.38
    xs = range(len(labels))
    if firsts:
        ax.bar([x - width / 2 for x in xs], [r.metrics.get(metric, 0.0) for r in firsts], width, label="first stage",
               color="#9aa5b1")
        after = [reranked[r.name].metrics.get(metric, 0.0) if r.name in reranked else 0.0 for r in firsts]
        ax.bar([x + width / 2 for x in xs], after, width, label=f"re-ranked ({report.model})", color="#2f6fb0")
    else:
        ax.bar(list(xs), [r.metrics.get(metric, 0.0) for r in report.rows], width, color="#2f6fb0")
    for i, ref in enumerate(r for r in report.references if r.metric == metric):
        ax.axhline(ref.value, linestyle="--", linewidth=1, color=f"C{i + 1}", label=f"{ref.system} (published)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel(MEASURE_LABELS.get(metric, metric))
    ax.set_title(f"{report.dataset}: {MEASURE_LABELS.get(metric, metric)}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def _latency_plot(report: Report, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for i, (name, t) in enumerate(report.timings.items()):
        total = np.sort(np.asarray(t.total_ms))
        if total.size == 0:
            continue
        ecdf = np.arange(1, total.size + 1) / total.size
        left.step(total, ecdf, where="post", label=name, color=f"C{i}")
        for q, marker in ((50, "o"), (99, "^")):
            left.plot([t.p("total", q)], [q / 100], marker=marker, color=f"C{i}")
    left.set_xscale("log")
    left.set_xlabel("per-query latency, ms (log; o p50, ^ p99)")
    left.set_ylabel("fraction of queries")
    left.set_title("latency distribution")
    left.legend(fontsize=7)
    names = list(report.timings)
    bottom = np.zeros(len(names))
    for stage in STAGES:
        means = np.array([sum(t.ms.get(stage, [])) / max(t.queries, 1) for t in report.timings.values()])
        if means.any():
            right.bar(names, means, bottom=bottom, label=stage)
            bottom += means
    right.set_ylabel("mean ms per query")
    right.set_title("time by stage")
    right.set_xticks(range(len(names)))
    right.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    right.legend(fontsize=7)
    _save(fig, path)


def write_report(report: Report, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.md``, ``metrics.png`` and ``latency.png`` (when there are timings) into
    ``out_dir``; returns the Markdown file's path. Figures are drawn with ``Figure`` objects on
    the Agg canvas, never through pyplot, so no display or global backend state is involved."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    if report.rows:
        _metrics_plot(report, out / "metrics.png")
        plots.append("metrics.png")
    if report.timings:
        _latency_plot(report, out / "latency.png")
        plots.append("latency.png")
    md = out / "report.md"
    atomic_write_text(md, _markdown(report, plots))
    logger.info("wrote %s", md)
    return md
