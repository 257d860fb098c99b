"""Benchmark outputs: a markdown table, and results.json/.csv/.md/.png written atomically.

The table has one line per engine x model x shape, with decode latency and size relative to the
first directory; the CSV flattens the ratios into ``vs_first_*`` columns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["TABLE_COLUMNS", "markdown_table", "write_outputs"]


TABLE_COLUMNS = (
    ("engine", "engine"), ("model", "model"), ("batch", "batch_size"), ("prompt", "prompt_length"),
    ("prompt ms", "prompt_latency_ms"), ("TTFT ms", "first_token_latency_ms"),
    ("decode ms/tok", "decode_latency_ms"), ("tok/s", "decode_throughput_tps"), ("peak RSS MB", "peak_rss_mb"),
    ("model mem MB", "model_memory_mb"),
    ("size MB", "model_size_mb"),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per engine x model x shape, with decode latency and size relative to the first directory."""
    head = [name for name, _ in TABLE_COLUMNS] + ["decode x first", "size x first"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        cells = [_cell(row.get(key)) for _, key in TABLE_COLUMNS]
        ratios = row.get("vs_first") or {}
        cells += [_cell(ratios.get("decode_latency_ms")), _cell(ratios.get("model_size_mb"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def write_outputs(report: dict[str, Any], out: Path) -> list[str]:
    """results.json, results.csv, results.md and results.png in ``out`` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    flat = [{k: v for k, v in row.items() if not isinstance(v, (list, dict))} |
            {f"vs_first_{k}": v for k, v in (row.get("vs_first") or {}).items()} for row in report["results"]]
    _atomic_write(out / "results.json", json.dumps(report, indent=2, default=str) + "\n")
    _atomic_write(out / "results.csv", _csv(flat))
    _atomic_write(out / "results.md", markdown_table(report["results"]))
    _plot(report["results"], out / "results.png")
    return ["results.json", "results.csv", "results.md", "results.png"]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: per-token decode latency and prompt latency, one bar per model, per engine x shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["engine"], r["batch_size"], r["prompt_length"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.5 * len(groups) + 4), 4.5))
    width = 0.8 / max(len(models), 1)
    for ax, key, title in ((axes[0], "decode_latency_ms", "decode latency (ms/token)"),
                           (axes[1], "prompt_latency_ms", "prompt latency (ms)")):
        for m, model in enumerate(models):
            values = [next((r[key] for r in rows if (r["engine"], r["batch_size"], r["prompt_length"]) == g
                            and r["model"] == model), 0.0) for g in groups]
            ax.bar([i + m * width for i in range(len(groups))], values, width, label=model)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(groups))])
        ax.set_xticklabels([f"{e}\nb{b} p{p}" for e, b, p in groups], fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("ms")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
