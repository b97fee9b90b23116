"""Benchmark results: Markdown table, CSV, JSON and PNG bar charts (or accuracy-vs-step lines for --watch).

Results are a dict: {"suite", "columns": ["dataset/evaluation/metric", ...], "rows": [{"checkpoint",
"trunk", "stem", "step", "metrics": {column: percent}, "details": {...}}]}. Nothing machine- or
time-dependent is written, so the same suite run twice gives byte-identical files.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional


def _fmt(v: Optional[float]) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def markdown_table(results: Dict[str, Any], by_step: bool = False) -> str:
    cols = results["columns"]
    first = ["step", "checkpoint"] if by_step else ["checkpoint"]
    head = "| " + " | ".join(first + cols) + " |"
    sep = "|" + "|".join(["---"] * len(first) + ["---:"] * len(cols)) + "|"
    lines = [head, sep]
    for r in results["rows"]:
        lead = ([str(r.get("step", "")), r["checkpoint"]] if by_step else [r["checkpoint"]])
        lines.append("| " + " | ".join(lead + [_fmt(r["metrics"].get(c)) for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def csv_text(results: Dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["checkpoint", "trunk", "stem", "step"] + results["columns"])
    for r in results["rows"]:
        w.writerow([r["checkpoint"], r.get("trunk", ""), r.get("stem", ""),
                    "" if r.get("step") is None else r["step"]]
                   + [_fmt(r["metrics"].get(c)) for c in results["columns"]])
    return buf.getvalue()


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@%-]+", "_", s).replace("%", "pct").strip("_")


def _groups(columns: List[str]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for c in columns:
        g, metric = c.rsplit("/", 1)
        out.setdefault(g, []).append(metric)
    return out


def bar_charts(results: Dict[str, Any], out: Path) -> List[Path]:
    """One PNG per dataset/evaluation: grouped bars (one per checkpoint) for each metric, std as error bars."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    paths = []
    names = [r["checkpoint"] for r in results["rows"]]
    for group, metrics in _groups(results["columns"]).items():
        shown = [m for m in metrics if not m.endswith("_std")]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(shown) * max(1, len(names)) * 0.6 + 2), 3.6))
        width = 0.8 / max(1, len(names))
        for i, r in enumerate(results["rows"]):
            vals = [r["metrics"].get(f"{group}/{m}", float("nan")) for m in shown]
            err = [r["metrics"].get(f"{group}/{m}_std", 0.0) for m in shown]
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(shown))]
            ax.bar(xs, vals, width, yerr=err if any(err) else None, capsize=3, label=_short(r["checkpoint"]))
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels(shown)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(group)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / f"chart_{_slug(group)}.png"
        fig.savefig(p, dpi=80, metadata={"Software": None})
        plt.close(fig)
        paths.append(p)
    return paths


def step_plot(results: Dict[str, Any], out: Path) -> Path:
    """Accuracy vs training step, one line per metric column (std columns skipped)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r.get("step") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in results["columns"]:
        if c.endswith("_std"):
            continue
        ax.plot([r["step"] for r in rows], [r["metrics"].get(c, float("nan")) for r in rows], marker="o", label=c)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    p = out / "accuracy_vs_step.png"
    fig.savefig(p, dpi=80, metadata={"Software": None})
    plt.close(fig)
    return p


def _short(s: str, n: int = 28) -> str:
    return s if len(s) <= n else "..." + s[-(n - 3):]


def write_results(results: Dict[str, Any], out: os.PathLike, by_step: bool = False) -> Dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "results.md", "csv": out / "results.csv", "json": out / "results.json"}
    title = f"# {results.get('suite', 'benchmark')}\n\nAccuracy in % (dataset/evaluation/metric).\n\n"
    _atomic_text(files["md"], title + markdown_table(results, by_step))
    _atomic_text(files["csv"], csv_text(results))
    _atomic_text(files["json"], json.dumps(results, indent=1, sort_keys=False) + "\n")
    for i, p in enumerate(bar_charts(results, out)):
        files[f"chart{i}"] = p
    if by_step:
        files["step_md"] = out / "accuracy_vs_step.md"
        _atomic_text(files["step_md"], markdown_table(results, by_step=True))
        files["step_png"] = step_plot(results, out)
    return files
