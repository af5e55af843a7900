"""``nachos eval [EXPORT_DIR ...]``: exported early-exit models on the TEST split.

    nachos eval runs/cifar10/export/nsga2-0147          # one export (or several, one after another)
    nachos eval --supernet                              # the supernet's largest / smallest subnets
    nachos eval --config configs/cifar10.yaml           # every export of the config's run
    make eval CONFIG=configs/cifar10.yaml               # the same

Measured, per export: accuracy; per exit, the share of samples leaving there and their
accuracy (plus every exit's accuracy on all samples); expected MACs from the observed exit
counts and the export's cost-table entries; ECE of the predictions taken; whether the batched
early-exit run took the same decisions as all exits + ``exits.policies.decide_exits``; and
batch-1 latency on the current device with early exit vs the same backbone run to the end
without heads (median over ``export.latency_images`` test images, the two timed alternately
so that drifting machine load hits both alike; on CPU with one thread unless ``num_threads`` is
set), for the PyTorch model and, when present, the
TorchScript file and the ONNX runner. The data set and its normalisation come from the
export's own recorded config, so an export is evaluated on what it was trained for.

Writes ``eval.json``, ``eval.md`` and ``eval.png`` into the export folder.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.export import export_root, load_exported, load_torchscript, make_hint, run_early_exit
from eval.metrics import exit_statistics, expected_cost, latency_summary, softmax_np
from eval.onnx_runner import MANIFEST, OnnxEarlyExitRunner, read_manifest
from eval.runtime import EarlyExitModel
from exits.metrics import expected_calibration_error
from exits.policies import decide_exits
from nachos.config import Config, ConfigError, saved_config_here
from nachos.runtime import RunError, atomic_write_text, memory_format, resolve_device, synchronize

DEPLOY_STEPS = 40  # deployment_grid: thresholds 0, 0.025, ..., 1 besides the search's own


# ----------------------------------------------------------------------------- which exports
def each_export_dir(given: list[str] | None, resolve: Callable[[str | None], list[Path]]) -> list[Path]:
    """What ``resolve`` finds for each folder given on the command line (for ``None`` when none is
    given: the run's own), in order, each folder once even when two given ones overlap."""
    return list(dict.fromkeys(f for d in (given or [None]) for f in resolve(d)))


def resolve_export_dirs(cfg: Config, export_dir: str | None, config_path: str | None = None) -> list[Path]:
    """The export folder given, every export under a folder given, or every export of the config's run."""
    root = Path(export_dir) if export_dir else export_root(cfg)
    if root.name == MANIFEST:
        root = root.parent
    if (root / MANIFEST).is_file():
        return [root]
    found = sorted(p for p in root.glob("*") if (p / MANIFEST).is_file()) if root.is_dir() else []
    if found:
        return found
    if export_dir:
        raise RunError(f"no export at {root} (no {MANIFEST} there or in its subfolders); create one with "
                       f"{make_hint('export', cfg, config_path)}")
    raise RunError(f"no exports in {root}; export solutions of the search first: "
                   f"{make_hint('export', cfg, config_path)}")


def source_config(manifest: dict[str, Any], cfg: Config) -> Config:
    """The export's recorded config (its data set, split and normalisation) on this machine
    (``nachos.config.saved_config_here``)."""
    try:
        return saved_config_here(manifest.get("config", {}), cfg)
    except ConfigError as err:
        # not the given config instead: its seed or val_fraction may draw another validation split,
        # which would choose thresholds on images the export trained on
        raise RunError(f"the export's recorded config does not load here ({err}); export it again with this "
                       "version of nachos") from None


def test_order(labels: torch.Tensor, num_classes: int, subset: int, seed: int) -> torch.Tensor:
    """Test-split positions in a seeded random order; with ``subset``, a class-balanced subset.

    Sources may store the test split sorted by class (the CIFAR-10 JPEG tarball does), so the
    first N images would all be airplanes, and the images timed for latency would all come
    from one class."""
    from nachos.data import balanced_pick, derived_generator

    if subset and subset < len(labels):
        index = balanced_pick(labels, subset, num_classes, derived_generator(seed, "eval-subset"))
    else:
        index = torch.arange(len(labels))
    return index[torch.randperm(len(index), generator=derived_generator(seed, "eval-order"))]


# ----------------------------------------------------------------------------- latency
def time_pair(images: list[Any], early: Callable[[Any], Any], full: Callable[[Any], Any], warmup: int,
              device: torch.device, repeats: int = 1) -> tuple[list[float], list[float]]:
    """Seconds per call of ``early`` and ``full`` on each image (batch 1), the two alternating
    (who goes first alternates too); with ``repeats`` > 1, each image's median over that many
    calls, which keeps a load spike of a shared machine out of a per-image figure."""
    for k in range(min(warmup, len(images))):
        early(images[k])
        full(images[k])
    synchronize(device)
    t_early, t_full = [], []
    for k, x in enumerate(images):
        got: tuple[list[float], list[float]] = ([], [])
        for r in range(repeats):
            order = ((early, got[0]), (full, got[1])) if (k + r) % 2 == 0 else ((full, got[1]), (early, got[0]))
            for fn, out in order:
                start = time.perf_counter()
                fn(x)
                synchronize(device)
                out.append(time.perf_counter() - start)
        t_early.append(float(np.median(got[0])))
        t_full.append(float(np.median(got[1])))
    return t_early, t_full


def _latency_block(t_early: list[float], t_full: list[float], exits: np.ndarray | None = None,
                   num_exits: int = 0) -> dict[str, Any]:
    ee, full = latency_summary(t_early), latency_summary(t_full)
    out: dict[str, Any] = {"early_exit": ee, "full_backbone": full,
                           "ratio": ee["median_ms"] / full["median_ms"] if full["median_ms"] > 0 else float("nan")}
    if exits is not None:
        t = np.asarray(t_early)
        by_exit = [float(1e3 * np.median(t[exits == i])) if (exits == i).any() else None for i in range(num_exits + 1)]
        out["early_exit_median_ms_by_exit"] = by_exit
        # the median image says little when most images leave at one exit; the per-exit medians
        # weighted by how many images left there estimate the mean latency without load spikes
        rates = np.bincount(exits, minlength=num_exits + 1) / len(exits)
        expected = float(sum(r * b for r, b in zip(rates, by_exit) if b is not None))
        out["early_exit_expected_ms"] = expected
        out["expected_ratio"] = expected / full["median_ms"] if full["median_ms"] > 0 else float("nan")
    return out


@torch.inference_mode()
def measure_latency(folder: Path, model: EarlyExitModel, x: torch.Tensor, cfg: Config,
                    device: torch.device) -> dict[str, Any]:
    """Batch-1 latency of early exit vs the backbone alone, for every form the export holds."""
    e = cfg.export
    images = [x[k:k + 1].to(device) for k in range(min(e.latency_images, len(x)))]
    if not images:
        return {}
    before = torch.get_num_threads()
    if device.type == "cpu":
        # batch 1 of a small network gains nothing from intra-op threads, and on a shared machine
        # they turn every other process's load into latency spikes; num_threads=N overrides
        torch.set_num_threads(cfg.num_threads or 1)
    try:
        return _measure_latency(folder, model, images, cfg, device)
    finally:
        torch.set_num_threads(before)


def _measure_latency(folder: Path, model: EarlyExitModel, images: list[torch.Tensor], cfg: Config,
                     device: torch.device) -> dict[str, Any]:
    e = cfg.export
    exits = np.array([int(model(img)[1]) for img in images])
    out: dict[str, Any] = {"images": len(images), "batch_size": 1, "device": str(device),
                           "threads": torch.get_num_threads(), "warmup": e.latency_warmup,
                           "exit_counts_of_timed_images": np.bincount(exits, minlength=model.num_exits + 1).tolist()}
    te, tf = time_pair(images, model, model.run_backbone, e.latency_warmup, device)
    out["pytorch"] = _latency_block(te, tf, exits, model.num_exits)
    _, m = read_manifest(folder)
    if m.get("torchscript"):
        ts = load_torchscript(folder, device)
        te, tf = time_pair(images, ts, ts.run_backbone, e.latency_warmup, device)
        out["torchscript"] = _latency_block(te, tf, exits, model.num_exits)
    if m.get("onnx") and device.type == "cpu":
        runner = OnnxEarlyExitRunner(folder, threads=torch.get_num_threads())
        arrays = [img.cpu().numpy() for img in images]
        te, tf = time_pair(arrays, runner.predict, runner.run_backbone, e.latency_warmup, device)
        out["onnx"] = _latency_block(te, tf, exits, model.num_exits)
    return out


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def all_exit_pass(model: EarlyExitModel, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """(E+1, N) predictions of every exit and the final classifier, and (E, N) exit confidences."""
    preds, confs = [], []
    for x, _ in loader:
        outs, conf = model.run_all_confidences(x)
        preds.append(torch.stack([o.argmax(1) for o in outs]).cpu())
        confs.append(conf.cpu())
    return torch.cat(preds, 1).numpy(), torch.cat(confs, 1).numpy()


@torch.no_grad()
def validation_cache(model: EarlyExitModel, loader: Any) -> Any:
    """Every selected exit's and the final classifier's predictions on a split, as the search's
    ``BackboneCache`` over the export's own exits (position i = selected exit i)."""
    from search.scoring import BackboneCache

    pred, conf = all_exit_pass(model, loader)
    labels = torch.cat([y.cpu() for _, y in loader]).numpy()
    conf = np.concatenate([conf, np.ones((1, conf.shape[1]), dtype=np.float32)]).astype(np.float32)
    return BackboneCache("export", pred.astype(np.int16), conf, labels)


def search_grid(src: Config) -> np.ndarray:
    """The threshold grid the search (and fine-tuning) choose from: ``search.threshold_*``."""
    from search.scoring import threshold_grid

    s = src.search
    return threshold_grid(s.threshold_min, s.threshold_max, s.threshold_steps)


def deployment_grid(src: Config) -> np.ndarray:
    """The grid of the operating point and the trade-off curve: the search's grid plus 0..1 in
    steps of 1/DEPLOY_STEPS. A trained network is no longer scored thousands of times, so a finer
    and wider grid is affordable, and the search's floor (often 0.5) need not bound its cheap end."""
    return np.union1d(search_grid(src), np.round(np.linspace(0.0, 1.0, DEPLOY_STEPS + 1), 6))


def threshold_scorer(cache: Any, grid: np.ndarray, criterion: str, exit_costs: np.ndarray) -> Any:
    """The search's scorer over an export's own exits (``cache`` from ``validation_cache``)."""
    from search.scoring import ExitSetScorer

    return ExitSetScorer(cache, tuple(range(cache.num_positions)), grid, criterion, exit_costs)


def choose_thresholds(scorer: Any, budget: float = np.inf,
                      min_accuracy: float | None = None) -> tuple[list[float], list[int], float, float]:
    """Thresholds of the scorer's grid with the highest accuracy and expected cost <= ``budget``, or,
    given ``min_accuracy``, with the lowest expected cost and accuracy >= it: (thresholds, their grid
    indices, accuracy, expected cost)."""
    from search.scoring import refine_thresholds

    idx, acc, cost = refine_thresholds(scorer, budget * (1 + 1e-9), min_accuracy=min_accuracy)
    return [float(scorer.grid[j]) for j in idx], [int(j) for j in idx], acc, cost


def _apply_on_test(thresholds: list[float], test_pred: np.ndarray, test_conf: np.ndarray, labels: np.ndarray,
                   criterion: str, exit_costs: np.ndarray) -> dict[str, Any]:
    taken = decide_exits(torch.from_numpy(test_conf), torch.tensor(thresholds), criterion).numpy()
    counts = np.bincount(taken, minlength=len(exit_costs))
    pred = test_pred[taken, np.arange(len(labels))]
    return {"accuracy": float((pred == labels).mean()), "expected_macs": expected_cost(counts.tolist(), exit_costs),
            "exit_rates": (counts / counts.sum()).tolist()}


MAX_MARGIN_STEPS = 50  # raising the margin converges in a few steps; a cap keeps a bad case bounded


def discordance_scorer(cache: Any, grid: np.ndarray, criterion: str, exit_costs: np.ndarray) -> Any:
    """A scorer whose "accuracy" is the share of images on which the early-exit network and its final
    classifier differ in being right: the second moment of the paired accuracy difference."""
    from search.scoring import BackboneCache

    flips = cache.correct != cache.correct[-1:]
    disc = BackboneCache("discordance", cache.pred, cache.conf, cache.labels, _correct=flips)
    return threshold_scorer(disc, grid, criterion, exit_costs)


def paired_lower_bound(accuracy: float, final: float, discordance: float, n: int, z: float) -> float:
    """One-sided lower bound of (early-exit accuracy - final classifier accuracy) on ``n`` paired
    images: the mean difference minus ``z`` standard errors (the variance of a difference in
    {-1, 0, 1} is its discordance minus its mean squared)."""
    d = accuracy - final
    return d - z * float(np.sqrt(max(discordance - d * d, 0.0) / n))


def bounded_thresholds(scorer: Any, discordance: Any, final_val: float, max_drop: float,
                       z: float) -> tuple[list[float], float, float, float]:
    """The cheapest thresholds whose ``paired_lower_bound`` on validation is at most ``max_drop``
    below the final classifier: (thresholds, val accuracy, val expected cost, bound). The accuracy
    asked of ``choose_thresholds`` rises to the margin each rejected point would have needed; when
    nothing passes, every image leaves at the final classifier (the deployment grid's top value,
    1.0, lets none out early), whose difference is 0."""
    margin = 0.0
    for _ in range(MAX_MARGIN_STEPS):
        want = final_val - max_drop + margin
        thresholds, idx, val_acc, val_macs = choose_thresholds(scorer, min_accuracy=want)
        if val_acc < want - 1e-12:  # no thresholds reach the raised accuracy
            break
        disc = float(discordance.score(np.asarray(idx)).accuracy[0])
        bound = paired_lower_bound(val_acc, final_val, disc, scorer.n, z)
        if bound >= -max_drop - 1e-12:
            return thresholds, val_acc, val_macs, bound
        margin = max(margin + 1.0 / scorer.n, (val_acc - final_val) - bound)
    s = scorer.score(np.full(scorer.k, scorer.grid_size - 1))
    return [float(scorer.grid[-1])] * scorer.k, float(s.accuracy[0]), float(s.expected_cost[0]), 0.0


def operating_point(scorer: Any, final_val: float, test_pred: np.ndarray, test_conf: np.ndarray,
                    labels: np.ndarray, criterion: str, exit_costs: np.ndarray, backbone_macs: float,
                    max_drop: float, z: float = 0.0, discordance: Any = None) -> dict[str, Any]:
    """The export's own exits at the cheapest thresholds whose VALIDATION accuracy (``scorer``) is at
    most ``max_drop`` below its final classifier's ``final_val`` (what a deployer who may lose
    ``max_drop`` would pick), then scored on the test predictions (``test_pred`` (E+1, N),
    ``test_conf`` (E, N)). A head whose threshold never lets a sample out still costs its MACs: the
    export's exit set is fixed.

    With ``z`` > 0 (and ``discordance`` from ``discordance_scorer``) the drop must hold for the
    one-sided bound of ``paired_lower_bound``, not the validation mean alone
    (``bounded_thresholds``): the cheapest point that barely passes on validation is the one most
    flattered by its noise."""
    if z > 0:
        thresholds, val_acc, val_macs, bound = bounded_thresholds(scorer, discordance, final_val, max_drop, z)
    else:
        thresholds, _, val_acc, val_macs = choose_thresholds(scorer, min_accuracy=final_val - max_drop)
        bound = val_acc - final_val
    test = _apply_on_test(thresholds, test_pred, test_conf, labels, criterion, exit_costs)
    final_test = float((test_pred[-1] == labels).mean())
    test.update(final_classifier_accuracy=final_test, loss_vs_final=final_test - test["accuracy"],
                saving_vs_backbone=1.0 - test["expected_macs"] / backbone_macs)
    rule = "cheapest thresholds with validation accuracy >= final classifier - max_accuracy_drop"
    if z > 0:
        rule += f", for the mean minus {z:g} standard errors of the paired difference"
    return {"rule": rule, "max_accuracy_drop": max_drop, "z": z, "thresholds": thresholds,
            "val": {"accuracy": val_acc, "expected_macs": val_macs, "final_classifier_accuracy": final_val,
                    "lower_bound_of_difference": bound},
            "test": test}


def tradeoff_curve(scorer: Any, test_pred: np.ndarray, test_conf: np.ndarray, labels: np.ndarray, criterion: str,
                   exit_costs: np.ndarray, steps: int = 21) -> list[dict[str, Any]]:
    """The trained network's accuracy / expected-MAC trade-off over its thresholds: for budgets
    from its first exit's cost to its peak, the most accurate thresholds on VALIDATION (``scorer``)
    within the budget, then scored on test. Each point is a deployment choice made without the test split."""
    points, seen = [], set()
    for budget in np.linspace(exit_costs[0], exit_costs[-1], steps):
        thresholds, _, val_acc, val_macs = choose_thresholds(scorer, budget=float(budget))
        if tuple(thresholds) in seen:
            continue
        seen.add(tuple(thresholds))
        points.append({"budget": float(budget), "thresholds": thresholds,
                       "val": {"accuracy": val_acc, "expected_macs": val_macs},
                       "test": _apply_on_test(thresholds, test_pred, test_conf, labels, criterion, exit_costs)})
    return points

def evaluate_export(folder: str | Path, cfg: Config) -> dict[str, Any]:
    """Evaluate one export on the test split; writes eval.json / eval.md / eval.png into it."""
    from nachos.data import load_splits, make_loader

    folder, m = read_manifest(folder)
    src = source_config(m, cfg)
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model = load_exported(folder, device)
    t0 = time.perf_counter()
    splits = load_splits(src)
    splits.check_held_out(m["source"].get("held_out_digest"), folder,
                          "its operating point would be chosen on images the supernet trained on",
                          "Evaluate with the data it was exported with (that run's data.root and data.cache_dir)")
    order = test_order(splits.test_y, splits.num_classes, cfg.export.test_subset, src.seed)
    n = len(order)
    x_all, y_all = splits.test_x[order], splits.test_y[order]
    mean, std = m["input"]["mean"], m["input"]["std"]
    loader = make_loader(src, x_all, y_all, device, train=False, seed=src.seed, mean=mean, std=std)

    pred, ex, logits, labels = run_early_exit(model, loader)
    E = model.num_exits
    stats = exit_statistics(ex, pred, labels, E)
    costs = np.asarray(m["macs"]["exit_costs"], dtype=np.float64)
    all_pred, conf = all_exit_pass(model, loader)
    ref_exit = decide_exits(torch.from_numpy(conf), model.thresholds.cpu(), model.criterion).numpy()
    ref_pred = all_pred[ref_exit, np.arange(len(labels))]
    probs = softmax_np(logits)
    correct = pred == labels
    result: dict[str, Any] = {
        "id": folder.name, "export_dir": str(folder), "split": "test", "images": int(len(labels)),
        "test_digest": splits.test_digest(order), "dataset": src.data.name, "criterion": model.criterion,
        "exits": m["exits"], "thresholds": m["thresholds"],
        "accuracy": float(correct.mean()),
        "exit_counts": stats["counts"], "exit_rates": stats["rates"], "exit_accuracy": stats["accuracy"],
        "exit_accuracy_all_samples": [float((p == labels).mean()) for p in all_pred],
        "expected_macs": expected_cost(stats["counts"], costs), "exit_costs": costs.tolist(),
        "peak_macs": float(costs[-1]), "backbone_macs": float(m["macs"]["backbone"]), "params": m["params"],
        "macs_saving_vs_backbone": 1.0 - expected_cost(stats["counts"], costs) / float(m["macs"]["backbone"]),
        "ece": expected_calibration_error(probs.max(1), correct, cfg.export.ece_bins), "ece_bins": cfg.export.ece_bins,
        "same_exits_as_all_exits_rule": float((ref_exit == ex).mean()),
        "same_predictions_as_all_exits_rule": float((ref_pred == pred).mean()),
        "validation": {k: m["validation"].get(k) for k in ("accuracy", "expected_macs", "exit_rates")},
        "mac_convention": m["macs"]["convention"],
    }
    val_loader = make_loader(src, splits.val_x, splits.val_y, device, train=False, seed=src.seed, mean=mean, std=std)
    val_cache = validation_cache(model, val_loader)  # one scorer for the operating point and every budget
    grid, z = deployment_grid(src), cfg.export.drop_confidence
    scorer = threshold_scorer(val_cache, grid, model.criterion, costs)
    result["operating_point"] = operating_point(
        scorer, float(val_cache.correct[-1].mean()), all_pred, conf, labels, model.criterion, costs,
        float(m["macs"]["backbone"]), cfg.export.max_accuracy_drop, z,
        discordance_scorer(val_cache, grid, model.criterion, costs) if z > 0 else None)
    result["tradeoff"] = tradeoff_curve(scorer, all_pred, conf, labels, model.criterion, costs)
    result["seconds_accuracy_pass"] = time.perf_counter() - t0
    k = min(cfg.export.latency_images, n)
    if k:
        timed = make_loader(src, x_all[:k], y_all[:k], device, train=False, seed=src.seed, mean=mean, std=std)
        result["latency"] = measure_latency(folder, model, torch.cat([xb for xb, _ in timed]), cfg, device)
    write_reports(folder, result, m)
    return result


# ----------------------------------------------------------------------------- reports
def _exit_labels(m: dict[str, Any]) -> list[str]:
    return [f"exit {i} (pos {p})" for i, p in enumerate(m["exits"])] + ["final"]


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(result: dict[str, Any], m: dict[str, Any]) -> str:
    r, val = result, result["validation"]
    lines = [f"# Evaluation of `{r['id']}` ({r['dataset']} test split, {r['images']:,} images)", "",
             f"Arch `{m['arch_str']}`, exits {m['exits']} (thresholds {m['thresholds']}, criterion {m['criterion']}), "
             f"{m['params']:,} parameters; source run `{m.get('source', {}).get('run', '?')}`.", "",
             "| metric | test | validation (export) |", "|---|---|---|",
             f"| accuracy | {r['accuracy']:.4f} | {_fmt(val['accuracy'])} |",
             f"| expected MACs | {r['expected_macs'] / 1e6:.4f} M | "
             f"{_fmt(None if val['expected_macs'] is None else val['expected_macs'] / 1e6)} M |",
             f"| peak MACs | {r['peak_macs'] / 1e6:.4f} M | |",
             f"| backbone MACs (no heads) | {r['backbone_macs'] / 1e6:.4f} M | |",
             f"| MAC saving vs backbone | {100 * r['macs_saving_vs_backbone']:.1f} % | |",
             f"| ECE ({r['ece_bins']} bins) | {r['ece']:.4f} | |",
             f"| early exits = all exits + decide_exits | {100 * r['same_exits_as_all_exits_rule']:.2f} % | |", "",
             "| exit | cumulative MACs | test rate | accuracy of samples leaving here | accuracy on all samples |",
             "|---|---|---|---|---|"]
    for label, cost, rate, acc, acc_all in zip(_exit_labels(m), r["exit_costs"], r["exit_rates"], r["exit_accuracy"],
                                               r["exit_accuracy_all_samples"]):
        lines.append(f"| {label} | {cost / 1e6:.4f} M | {rate:.4f} | {_fmt(acc)} | {acc_all:.4f} |")
    lat = r.get("latency") or {}
    if lat:
        lines += ["", f"Latency per image at batch 1 on {lat['device']} ({lat['threads']} threads), median over "
                      f"{lat['images']} test images (p10-p90 in brackets):", "",
                  "| form | early exit (median; expected = per-exit medians x exit shares) | backbone to the end | "
                  "ratio |", "|---|---|---|---|"]
        for form in ("pytorch", "torchscript", "onnx"):
            if form in lat:
                b = lat[form]
                ee, full = b["early_exit"], b["full_backbone"]
                lines.append(f"| {form} | {ee['median_ms']:.3f} ms ({ee['p10_ms']:.3f}-{ee['p90_ms']:.3f}); "
                             f"expected {b['early_exit_expected_ms']:.3f} ms | "
                             f"{full['median_ms']:.3f} ms ({full['p10_ms']:.3f}-{full['p90_ms']:.3f}) | "
                             f"{b['ratio']:.3f} (expected {b['expected_ratio']:.3f}) |")
    op = r.get("operating_point")
    if op:
        t = op["test"]
        lines += ["", f"Operating point within {100 * op['max_accuracy_drop']:g} points of the final classifier "
                      f"(thresholds {op['thresholds']}, the cheapest on the validation split whose accuracy is at "
                      f"most that below the final classifier's {op['val']['final_classifier_accuracy']:.4f}"
                      + (f", for the mean minus {op['z']:g} standard errors of the paired difference"
                         if op.get("z") else "") + "): "
                      f"test accuracy {t['accuracy']:.4f} (final classifier {t['final_classifier_accuracy']:.4f}) "
                      f"at {t['expected_macs'] / 1e6:.4f} M expected MACs, {100 * t['saving_vs_backbone']:.1f}% "
                      f"below the backbone; exit rates {[round(x, 3) for x in t['exit_rates']]}."]
    lines += ["", f"MAC convention: {r['mac_convention']}", ""]
    return "\n".join(lines)


def plot(path: Path, result: dict[str, Any], m: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = _exit_labels(m)
    xs = np.arange(len(labels))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    acc_here = [100 * a if a is not None else np.nan for a in result["exit_accuracy"]]
    ax1.bar(xs - 0.2, acc_here, 0.4, color="#1f4e79", label="samples leaving here")
    ax1.bar(xs + 0.2, [100 * a for a in result["exit_accuracy_all_samples"]], 0.4, color="#9ab7d3",
            label="all samples")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_xticks(xs, labels, fontsize=8)
    twin = ax1.twinx()
    twin.plot(xs, np.asarray(result["exit_costs"]) / 1e6, "o-", color="#b22222", label="cumulative MACs")
    twin.set_ylabel("MACs to leave here (M)")
    twin.set_ylim(bottom=0)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax1.set_title(f"accuracy and cost per exit (overall {100 * result['accuracy']:.2f}%)", fontsize=9)
    rates = 100 * np.asarray(result["exit_rates"])
    ax2.bar(xs - 0.2, rates, 0.4, color="#2e7d32", label="test")
    val_rates = result["validation"].get("exit_rates")
    if val_rates and len(val_rates) == len(xs):
        ax2.bar(xs + 0.2, 100 * np.asarray(val_rates), 0.4, color="#a5d6a7", label="validation")
    for x, r in zip(xs, rates):
        ax2.annotate(f"{r:.1f}%", (x - 0.2, r), ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(xs, labels, fontsize=8)
    ax2.set_ylabel("samples leaving (%)")
    ax2.legend(fontsize=7)
    ax2.set_title(f"exit histogram: expected {result['expected_macs'] / 1e6:.3f} M MACs "
                  f"(peak {result['peak_macs'] / 1e6:.3f} M)", fontsize=9)
    fig.suptitle(f"{result['id']} on the {result['dataset']} test split", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_reports(folder: Path, result: dict[str, Any], m: dict[str, Any]) -> None:
    atomic_write_text(folder / "eval.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(folder / "eval.md", markdown(result, m))
    plot(folder / "eval.png", result, m)


# ----------------------------------------------------------------------------- command
def _print(result: dict[str, Any]) -> None:
    r = result
    print(f"{r['id']}: test accuracy {r['accuracy']:.4f} ({r['images']:,} images)  expected MACs "
          f"{r['expected_macs'] / 1e6:.4f} M (peak {r['peak_macs'] / 1e6:.4f} M, saving "
          f"{100 * r['macs_saving_vs_backbone']:.1f}% vs the backbone)  ECE {r['ece']:.4f}")
    print(f"  exit rates {[round(x, 4) for x in r['exit_rates']]}  exit accuracy "
          f"{[None if a is None else round(a, 4) for a in r['exit_accuracy']]}")
    lat = r.get("latency", {}).get("pytorch")
    if lat:
        print(f"  batch-1 latency ({r['latency']['device']}): early exit median "
              f"{lat['early_exit']['median_ms']:.3f} ms, "
              f"expected {lat['early_exit_expected_ms']:.3f} ms vs backbone {lat['full_backbone']['median_ms']:.3f} ms "
              f"(ratio {lat['ratio']:.3f}, expected {lat['expected_ratio']:.3f})")
    op = r.get("operating_point")
    if op:
        t = op["test"]
        print(f"  within {100 * op['max_accuracy_drop']:g} points of the final classifier (thresholds chosen on "
              f"validation {op['thresholds']}): test accuracy {t['accuracy']:.4f} at {t['expected_macs'] / 1e6:.4f} M "
              f"({100 * t['saving_vs_backbone']:.1f}% saving)")
    print(f"  reports: {Path(r['export_dir']) / 'eval.md'}")


# ----------------------------------------------------------------------------- supernet endpoints
SUPERNET_TEST = "supernet_test.json"


def evaluate_supernet(cfg: Config, config_path: str | None = None) -> dict[str, Any]:
    """The trained supernet's largest and smallest subnets on the TEST split, each exit and the
    final classifier, after the same BN recalibration as validation during training; writes
    ``<run_dir>/supernet_test.json``. For the report only: the search never sees these figures."""
    from nachos.data import calibration_batches, load_splits, make_loader
    from search.backend import build_supernet, load_checkpoint
    from supernet.space import SearchSpace
    from supernet.train import autocast_factory, evaluate_subnet

    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    space = SearchSpace(cfg.space)
    path, ckpt = load_checkpoint(cfg, space, config_path)
    model = build_supernet(cfg, ckpt, path, config_path)
    fmt = memory_format(cfg.train.channels_last, device)
    model = model.to(device, memory_format=fmt)
    splits = load_splits(cfg)
    calib = [xb.contiguous(memory_format=fmt) for xb in
             calibration_batches(cfg, splits.train_x, splits.train_y, splits.mean, splits.std, device,
                                 cfg.train.bn_calib_batches)]
    order = test_order(splits.test_y, splits.num_classes, cfg.export.test_subset, cfg.seed)
    loader = make_loader(cfg, splits.test_x[order], splits.test_y[order], device, train=False, seed=cfg.seed,
                         mean=splits.mean, std=splits.std)
    autocast = autocast_factory(device, cfg.train.amp)
    result: dict[str, Any] = {"split": "test", "images": int(len(order)), "checkpoint": str(path),
                              "epoch": ckpt.get("epoch"), "bn_calib_batches": cfg.train.bn_calib_batches}
    with torch.no_grad():
        for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
            result[name] = {"arch": arch.to_dict(), **evaluate_subnet(model, space, arch, calib, loader, cfg, autocast)}
    atomic_write_text(cfg.run_dir / SUPERNET_TEST, json.dumps(result, indent=1))
    return result


def eval_command(cfg: Config, args: Any) -> int:
    from nachos.tracking import Tracker

    if getattr(args, "supernet", False):
        res = evaluate_supernet(cfg, getattr(args, "config", None))
        for name in ("largest", "smallest"):
            print(f"{name} subnet, {res['images']} test images: final {res[name]['final']:.4f}; exits "
                  + ", ".join(f"{k} {v:.4f}" for k, v in res[name].items() if k.startswith("exit_")))
        print(f"wrote {cfg.run_dir / SUPERNET_TEST}")
        return 0
    config_path = getattr(args, "config", None)
    folders = each_export_dir(getattr(args, "export_dirs", None), lambda d: resolve_export_dirs(cfg, d, config_path))
    tracker = Tracker(cfg, cfg.run_dir, "eval", enabled=cfg.wandb.mode != "disabled")
    try:
        for folder in folders:
            result = evaluate_export(folder, cfg)
            _print(result)
            key = f"eval/{result['id']}"
            tracker.summary({f"{key}/{k}": result[k] for k in ("accuracy", "expected_macs", "ece")})
            tracker.log_image(f"{key}/plot", Path(result["export_dir"]) / "eval.png")
    finally:
        tracker.finish()
    return 0
