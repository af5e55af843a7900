"""What a search leaves in ``runs/<name>/search/``: candidates, front, history, plot.

- ``candidates.jsonl``: every evaluated candidate of every algorithm, one JSON object a line.
- ``pareto.json`` / ``pareto.csv``: the admissible Pareto set, sorted by cost.
- ``history.json``: per algorithm and generation, hypervolume, feasible count, backbones, front.
- ``pareto.png``: all candidates, the admissible front, constraint lines and (CIFAR-10) the
  published NACHOS / EDANAS points.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from nachos.runtime import atomic_write_text
from search.evaluate import Constraints

Record = dict[str, Any]

# Published on the original CIFAR-10 (test split, mean of 5 runs): (label, accuracy, MACs).
PUBLISHED_CIFAR10 = (("NACHOS (published)", 0.7265, 2.43e6), ("EDANAS (published)", 0.6778, 2.47e6))

CSV_FIELDS = ("id", "algorithm", "accuracy", "expected_macs", "peak_macs", "params", "exits", "thresholds",
              "exit_rates", "threshold_source", "generation", "arch", "arch_json")


def write_candidates(path: Path, records: list[Record]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_candidates(path: Path) -> list[Record]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def front_table(front: list[Record]) -> tuple[list[str], list[list[Any]]]:
    """pareto.csv's columns and rows (also the W&B table); a latency search adds its latencies (seconds)."""
    latency = any("expected_latency" in r for r in front)
    fields = list(CSV_FIELDS) + (["expected_latency", "peak_latency"] if latency else [])
    rows = [[r["id"], r["algorithm"], round(r["accuracy"], 6), round(r["expected_macs"]), round(r["peak_macs"]),
             r["params"], " ".join(map(str, r["exits"])), " ".join(f"{t:g}" for t in r["thresholds"]),
             " ".join(f"{x:.4f}" for x in r["exit_rates"]), r["threshold_source"], r["generation"], r["arch_str"],
             json.dumps(r["arch"], sort_keys=True)] + ([r["expected_latency"], r["peak_latency"]] if latency else [])
            for r in front]
    return fields, rows


def write_front(folder: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(folder / "pareto.json", json.dumps(payload, indent=1, sort_keys=True))
    buf = io.StringIO()
    writer = csv.writer(buf)
    fields, rows = front_table(payload["front"])
    writer.writerow(fields)
    writer.writerows(rows)
    atomic_write_text(folder / "pareto.csv", buf.getvalue())


def plot_front(path: Path, archives: dict[str, list[Record]], front: list[Record], cons: Constraints,
               cost_key: str, dataset: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 1e6 if cost_key.endswith("macs") else 1.0
    unit = "expected MACs (M)" if cost_key.endswith("macs") else "expected latency (table units)"
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    colors = {"nsga2": "#9ab7d3", "random": "#e3b7a0"}
    for name, recs in archives.items():
        recs = [r for r in recs if r.get("scored", True)]  # never-run backbones have no accuracy to show
        if recs:
            ax.scatter([r[cost_key] / scale for r in recs], [100 * r["accuracy"] for r in recs], s=8, alpha=0.5,
                       color=colors.get(name, "#bbbbbb"), label=f"{name} candidates ({len(recs)})", linewidths=0)
    if front:
        xs = [r[cost_key] / scale for r in front]
        ys = [100 * r["accuracy"] for r in front]
        ax.step(xs, ys, where="post", color="#1f4e79", lw=1.2)
        ax.scatter(xs, ys, s=28, color="#1f4e79", zorder=3, label=f"admissible Pareto front ({len(front)})")
    if cons.min_accuracy > 0:
        ax.axhline(100 * cons.min_accuracy, color="#b22222", ls="--", lw=1, label=f"min accuracy {cons.min_accuracy:g}")
    if cons.max_expected_macs > 0 and cost_key == "expected_macs":
        ax.axvline(cons.max_expected_macs / scale, color="#b22222", ls=":", lw=1,
                   label=f"max expected MACs {cons.max_expected_macs / 1e6:.3g} M")
    if dataset == "cifar10" and cost_key == "expected_macs":
        for (label, acc, macs), marker in zip(PUBLISHED_CIFAR10, ("*", "D")):
            ax.scatter([macs / scale], [100 * acc], marker=marker, s=90, color="#2e7d32", zorder=4,
                       label=f"{label}: {100 * acc:.2f}% @ {macs / 1e6:.2f} M, original CIFAR-10 test")
    ax.set_xlabel(unit)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
