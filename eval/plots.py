"""The report's figure of a run: test accuracy vs expected MACs of everything compared, and the
search's hypervolume per evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.analysis import GOAL_ACCURACY, GOAL_MACS, algorithm_ablation, evaluated, like_for_like, rival_epochs
from eval.run_folder import RunData
from nachos.runtime import ensure_dir
from search.report import PUBLISHED_CIFAR10


TRAINING_STYLE = {"inherited": ("^", "#6a1b9a", "fine-tuned"), "scratch": ("v", "#c2185b", "retrained from scratch"),
                  "static": ("<", "#00838f", "exits on a frozen static backbone"),
                  "static+joint": (">", "#2e7d32", "exits on a static backbone, then fine-tuned jointly")}
TRAINING_LABEL = {"inherited": "", "scratch": " from scratch", "static": " exits only, on the static backbone",
                  "static+joint": " after exits on the static backbone"}


def _draw_accuracy_vs_macs(ax: Any, run: RunData, label_curves: bool = False) -> None:
    """Search front, exports by training, their trade-off curves, static baselines, published points."""
    front = sorted(run.front, key=lambda r: r["expected_macs"])
    if front:
        ax.plot([r["expected_macs"] / 1e6 for r in front], [100 * r["accuracy"] for r in front], "o--",
                mfc="none", color="#9ab7d3", label=f"search front, validation ({len(front)})")
    evs = sorted((e for e in evaluated(run) if not e.finetuned), key=lambda e: e.eval["expected_macs"])
    if evs:
        ax.plot([e.eval["expected_macs"] / 1e6 for e in evs], [100 * e.eval["accuracy"] for e in evs], "o-",
                color="#1f4e79", label=f"exported EENs, inherited weights, test ({len(evs)})")
    tuned = [e for e in evaluated(run) if e.finetuned]
    for kind, (marker, color, what) in TRAINING_STYLE.items():
        pts = [e for e in tuned if e.training == kind]
        if pts:
            ax.plot([e.eval["expected_macs"] / 1e6 for e in pts], [100 * e.eval["accuracy"] for e in pts], marker,
                    color=color, ms=8, label=f"exported EENs, {what}, test ({len(pts)})")
        for e in pts if kind != "inherited" else []:  # thresholds chosen on validation per budget, run on test
            curve = sorted((p["test"]["expected_macs"] / 1e6, 100 * p["test"]["accuracy"])
                           for p in e.eval.get("tradeoff", []))
            if curve:
                ax.plot(*zip(*curve), "-", color=color, lw=0.8, alpha=0.6)
                if label_curves:
                    ax.annotate(e.id, curve[-1], fontsize=5.5, color=color, xytext=(2, 2), textcoords="offset points")
    if any(e.eval.get("tradeoff") for e in tuned if e.training != "inherited"):
        ax.plot([], [], "-", color="#777777", lw=0.8, label="the same over their thresholds (chosen on val per MAC "
                "budget), test")
    for b in run.baselines:
        hand = b.get("origin", {}).get("kind") == "hand-designed"
        full = like_for_like(run, b)  # shorter-trained ones hollow: not rivals, rank-correlation points
        ax.scatter([b["macs"] / 1e6], [100 * b["test_accuracy"]], marker="D" if hand else "s", s=45, zorder=4,
                   color="#e07b00" if hand else "#b5651d", facecolors=None if full else "none")
        label = (b.get("short") or (b["tag"] if hand else b["tag"].replace("backbone-", "")[:6])) + (
            "" if full else f" ({b['epochs']} ep)")
        ax.annotate(label, (b["macs"] / 1e6, 100 * b["test_accuracy"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    if any(like_for_like(run, b) for b in run.baselines):
        ax.scatter([], [], marker="s", color="#b5651d",
                   label=f"static (no exits), >= {rival_epochs(run)} epochs, test")
    if not all(like_for_like(run, b) for b in run.baselines):
        ax.scatter([], [], marker="s", color="#b5651d", facecolors="none", label="static, shorter training, test")
    if run.dataset == "cifar10":
        for (label, acc, macs), marker in zip(PUBLISHED_CIFAR10, ("*", "P")):
            ax.scatter([macs / 1e6], [100 * acc], marker=marker, s=110, color="#2e7d32", zorder=5,
                       label=f"{label}, original CIFAR-10")
        ax.axhline(100 * GOAL_ACCURACY, color="#b22222", ls="--", lw=0.8, label=f"goal {100 * GOAL_ACCURACY:g}%")
        ax.axvline(GOAL_MACS / 1e6, color="#b22222", ls=":", lw=0.8, label=f"{GOAL_MACS / 1e6:g} M MACs")
    ax.set_xlabel("expected MACs (M); static networks: MACs")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


def plot_run(path: Path, run: RunData) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = algorithm_ablation(run) or {}
    trained = [e for e in evaluated(run) if e.finetuned]
    rivals = [b for b in run.baselines if like_for_like(run, b)]
    zoom = bool(trained) and bool(rivals)
    fig, axes = plt.subplots(1, 3 if zoom else 2, figsize=(17 if zoom else 12, 5.5), dpi=110,
                             gridspec_kw={"width_ratios": [3, 3, 2] if zoom else [3, 2]})
    ax, ax2 = axes[0], axes[-1]
    _draw_accuracy_vs_macs(ax, run)
    ax.set_title(f"{run.name}: accuracy vs expected MACs", fontsize=10)
    ax.legend(fontsize=6.5, loc="lower right", framealpha=0.7)
    if zoom:  # the trained networks and their static rivals sit within a point or two of each other
        axz = axes[1]
        _draw_accuracy_vs_macs(axz, run, label_curves=True)
        macs = [e.eval["expected_macs"] for e in trained] + [b["macs"] for b in rivals]
        accs = [e.eval["accuracy"] for e in trained] + [b["test_accuracy"] for b in rivals]
        axz.set_xlim(0.85 * min(macs) / 1e6, 1.08 * max(macs) / 1e6)
        axz.set_ylim(100 * min(accs) - 2.0, 100 * max(accs) + 0.8)
        axz.set_title("zoom: trained EENs and static networks (test)", fontsize=10)
    if algos and run.history:
        for name, h in run.history.items():
            gens = h.get("generations") or []
            ax2.plot([g.get("n_eval", i) for i, g in enumerate(gens)], [g["hypervolume"] for g in gens], ".-",
                     label=f"{name} (final {gens[-1]['hypervolume']:.4f})" if gens else name)
        ax2.set_xlabel("candidates evaluated")
        ax2.set_ylabel("hypervolume (validation)")
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    else:
        ax2.text(0.5, 0.5, "search history: not run", ha="center", va="center")
        ax2.set_axis_off()
    ax2.set_title("search progress", fontsize=10)
    fig.tight_layout()
    ensure_dir(path.parent)
    fig.savefig(path)
    plt.close(fig)
    return path
