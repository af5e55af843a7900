"""``nachos finetune [EXPORT_DIR ...]``: train exported early-exit networks further, from their
inherited weights (or again from scratch), then re-choose their thresholds on the validation split.

    nachos finetune --config configs/cifar10.yaml [export.select=best|all|3|acc>=0.8|macs<=2.7e6]
                    [export.finetune_epochs=10 export.finetune_lr=0.01] [export.finetune_init=scratch]
    nachos finetune runs/cifar10/export/nsga2-0147 runs/cifar10/export/nsga2-0212

Which exports: those given, else those of the run's exports that ``export.select`` picks (by
their validation accuracy and expected MACs, as ``nachos export`` picks front solutions).

Weight sharing ranks candidates cheaply but leaves accuracy on the table: a subnet's inherited
weights are a compromise with every other subnet (OFA fine-tunes its chosen subnets too). This
stage trains the chosen network alone: every weight of the backbone and of the selected exit
heads, with ``supernet.train.member_loss`` as the largest subnet gets it (final classifier:
cross-entropy with label smoothing; each exit: cross-entropy + distillation from the final
classifier, averaged over the exits; NACHOS's BCE / MACs terms under the learned criterion, no
support set), the run's augmentation, SGD and a per-step cosine schedule from
``export.finetune_lr``. With ``export.finetune_init=scratch`` the weights start from a fresh
random initialisation instead, with the static baselines' schedule (``train.lr``, warm-up
``train.warmup_epochs``): the searched early-exit network retrained the way ``nachos baseline``
trains a static one, so the two compare like for like. With ``export.finetune_init=static`` only
fresh exit heads are trained, same schedule, on the frozen backbone of the run's static baseline
of the same arch (``nachos baseline``; weights and BN statistics kept): exits added to a network
trained without them, whose final classifier therefore keeps the static network's accuracy.
With ``export.finetune_teacher=static`` the final classifier learns from that static network's
logits (frozen) instead of the labels, meant to hold a backbone that trains jointly with its
exits near the static network (on CIFAR-10 it did not help: docs/RESULTS.md, session 9).

Fine-tuning moves every exit's confidence, so the parent's thresholds no longer mean what they
did. They are re-chosen on the validation split (never the test split) over the search's
threshold grid: the highest accuracy whose expected MACs stay within the parent's own validation
expected MACs, so the result is comparable with, and no costlier than, the solution the search chose.

Writes ``<export_root>/<id>-ft<epochs>/`` (``<id>-scratch<epochs>/``, ``<id>-heads<epochs>/``; runs of
different lengths sit side by side), a complete export (same files and manifest as ``nachos
export``) with a ``finetune`` block (parent, init, epochs, lr, time, validation before / after),
which ``nachos eval`` and the report treat like any other export. A checkpoint ``<name>.pt`` is
written atomically after every epoch; a rerun resumes it (or skips a finished export), and refuses
either when it was written with other settings (a learning rate, say, that the name does not hold).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eval.export import (FORMAT, Exporter, check_images, export_root, load_exported, load_search_result, make_hint,
                         select_solutions, write_export)
from eval.fit import fit
from eval.onnx_runner import MANIFEST, read_manifest
from eval.runtime import EarlyExitModel
from nachos.config import SUPERNET_ONLY_TRAIN_KEYS, Config
from nachos.runtime import RunError, json_digest, memory_format, resolve_device, seed_everything
from supernet.space import Arch
from supernet.static import StaticEENet
from supernet.train import autocast_factory, member_loss

if TYPE_CHECKING:
    from nachos.data import Splits

NAME_TAGS = {"inherited": "ft", "scratch": "scratch", "static": "heads"}


def finetuned_name(parent: str, epochs: int, init: str = "inherited", exit_weight: float = 1.0,
                   backbone_grad: float = 1.0, teacher: str = "none") -> str:
    """The export name of ``parent`` trained ``epochs`` epochs from ``init`` weights."""
    return (f"{parent}-{NAME_TAGS[init]}{epochs}" + ("" if exit_weight == 1.0 else f"-w{exit_weight:g}")
            + ("" if backbone_grad == 1.0 else f"-g{backbone_grad:g}") + ("" if teacher == "none" else "-kd"))


LEARNED_EXIT_TERMS = ("w_cls", "w_bce", "w_macs", "w_support")


def with_exit_weight(src: Config, weight: float, backbone_grad: float = 1.0) -> Config:
    """``src`` whose exits' loss weighs ``weight`` times the supernet's against the final classifier,
    and reaches the backbone with a ``backbone_grad`` share of its gradient."""
    ex = src.exits
    if weight == 1.0 and backbone_grad == ex.backbone_grad:
        return src
    # the learned criterion's own terms train the exits too (softmax ignores them: its fingerprints stay)
    keys = ("w_ce", "w_distill") + (LEARNED_EXIT_TERMS if ex.criterion == "learned" else ())
    exits = dataclasses.replace(ex, backbone_grad=backbone_grad, **{k: getattr(ex, k) * weight for k in keys})
    return dataclasses.replace(src, exits=exits)


def data_split(cfg: Config) -> dict[str, Any]:
    """What decides which training images are held out for validation (``data.train_subset`` and
    ``data.val_subset`` only thin the two parts)."""
    return {"name": cfg.data.name, "val_fraction": cfg.data.val_fraction, "seed": cfg.seed}


def static_backbone(run_dir: Path, arch_key: str, min_epochs: int,
                    split: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The run's static baseline of this arch trained >= ``min_epochs`` on the train part of ``split``
    (the longest-trained one): its record and checkpoint; a RunError naming the command that trains
    it otherwise, or when the checkpoint no longer holds the network the record describes."""
    found, other_split = [], []
    for path in sorted((run_dir / "baselines").glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("arch_key") == arch_key and rec.get("epochs", 0) >= min_epochs and path.with_suffix(".pt").is_file():
            recipe = rec.get("recipe", {})
            theirs = {**recipe.get("data", {}), "seed": recipe.get("seed")}
            # a baseline copied in from another seed's run trained on some of this split's validation
            # images, where the exits' thresholds are chosen
            if any(theirs.get(k) != v for k, v in split.items()):
                other_split.append(f"{path.name} ({', '.join(f'{k} {theirs.get(k)}' for k in split)})")
                continue
            found.append((rec, path.with_suffix(".pt")))
    if not found and other_split:
        raise RunError(f"export.finetune_init=static / finetune_teacher=static: the static baselines of this arch "
                       f"under {run_dir / 'baselines'} were trained on another train/validation split than this "
                       f"export's ({', '.join(f'{k} {v}' for k, v in split.items())}): {'; '.join(other_split)}; "
                       "their training images include this export's validation images; train one with this run's "
                       "config: nachos baseline --config <config> <export folder>")
    if not found:
        raise RunError(f"export.finetune_init=static needs a static baseline of this arch ({arch_key}) trained for at "
                       f">= {min_epochs} epochs under {run_dir / 'baselines'}; train it first: nachos baseline "
                       "--config <config> <export folder>")
    rec, pt = max(found, key=lambda f: f[0]["epochs"])
    # the record is written once training ends, the checkpoint after every epoch: a retrain of the
    # same tag (another recipe) overwrites the weights the record describes long before it
    ckpt = torch.load(pt, map_location="cpu", weights_only=False)
    if (ckpt.get("fingerprint"), ckpt.get("epoch")) != (rec.get("fingerprint"), rec["epochs"]):
        raise RunError(f"{pt} does not hold the network {pt.with_suffix('.json').name} records (epoch "
                       f"{ckpt.get('epoch')} of settings {ckpt.get('fingerprint')}, not epoch {rec['epochs']} of "
                       f"{rec.get('fingerprint')}): a retrain of baseline {rec.get('tag')} is under way or was cut "
                       "short; let it finish (rerun the nachos baseline command that started it), then rerun this")
    return rec, pt


def load_static_network(ckpt_path: Path, like: StaticEENet) -> StaticEENet:
    """A static baseline's network (no exits, eval mode), checked to be ``like``'s arch."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    static = StaticEENet.from_config(like.description()["space"], like.description()["exits"], ckpt["arch"], [])
    static.load_state_dict(ckpt["model"])
    if static.arch != like.arch:
        raise RunError(f"{ckpt_path} holds arch {static.arch}, not the export's {like.arch}")
    return static.eval()


def load_static_backbone(net: StaticEENet, ckpt_path: Path) -> None:
    """Copy a static baseline's backbone (stem, blocks, final classifier) into ``net``, module by
    module: the two split the same modules into different segments, so their keys differ."""
    static = load_static_network(ckpt_path, net)
    for src, dst in zip(static.backbone_modules(), net.backbone_modules(), strict=True):
        dst.load_state_dict(src.state_dict())


# ----------------------------------------------------------------------------- which exports
def parents(cfg: Config, export_dir: str | None, config_path: str | None = None) -> list[Path]:
    """The exports to fine-tune: the one given, else those of the run's exports (not fine-tuned
    themselves) that ``export.select`` picks by their validation accuracy and expected MACs; an index
    means what it means to ``nachos export``: that solution of the search's front (pareto.csv)."""
    from eval.evaluate import resolve_export_dirs

    folders = resolve_export_dirs(cfg, export_dir, config_path)
    if export_dir and len(folders) == 1:
        return folders
    manifests = [(f, read_manifest(f)[1]) for f in folders]
    manifests = [(f, m) for f, m in manifests if "finetune" not in m]
    if not manifests:
        raise RunError(f"every export under {export_dir or export_root(cfg)} is a fine-tuned one already; export a "
                       f"solution first ({make_hint('export', cfg, config_path)}) or name the export folder to "
                       "fine-tune")
    if re.fullmatch(r"-?\d+", cfg.export.select.strip()):
        (i, rec), = select_solutions(load_search_result(cfg, config_path)[1]["front"], cfg.export.select)
        # the solution itself, not its index: an export of an earlier search kept its old front_index
        same = ("arch_key", "exits", "threshold_idx")
        found = [f for f, m in manifests if all(m.get(k) == rec.get(k) for k in same)]
        if not found:
            raise RunError(f"export.select={cfg.export.select}: front solution {i} (pareto.csv) has not been exported "
                           f"(or only from an earlier search); export it first with export.select={i} "
                           f"({make_hint('export', cfg, config_path)})")
        if len(found) > 1:
            raise RunError(f"export.select={cfg.export.select}: front solution {i} was exported more than once "
                           f"({', '.join(f.name for f in found)}); name the export folder to fine-tune")
        return found
    candidates = [(f, {"accuracy": m["validation"]["accuracy"], "expected_macs": m["expected_macs"]})
                  for f, m in manifests]
    chosen = select_solutions([rec for _, rec in candidates], cfg.export.select)
    return [candidates[i][0] for i, _ in chosen]


def _fingerprint(manifest: dict[str, Any], src: Config, init: str, epochs: int, lr: float,
                 warmup_epochs: float) -> str:
    train = {k: v for k, v in dataclasses.asdict(src.train).items() if k not in SUPERNET_ONLY_TRAIN_KEYS}
    recipe = {"epochs": epochs, "lr": lr, "seed": src.seed, "train": train,
              "augment": dataclasses.asdict(src.data.augment), "batch_size": src.data.batch_size,
              "exits": dataclasses.asdict(src.exits)}
    if init == "inherited":  # training goes on from the parent's weights
        recipe.update(parent_weights=manifest.get("files", {}).get(manifest.get("weights", "")),
                      thresholds=manifest["thresholds"])
    else:  # fresh weights: only the network's shape carries over, so a re-export (whose BN statistics
        # may differ in the last bits) must not throw away hours of training
        recipe.update(init=init, warmup_epochs=warmup_epochs, network=manifest["description"])
    return json_digest(recipe)


def finished_with(out: Path, fp: str, lr: float, lr_key: str) -> bool:
    """True when ``out`` was fine-tuned with these settings (fingerprint ``fp``); a RunError when it was
    written with other ones. The name holds the epochs, init, loss weights and teacher but not the
    rest of the fingerprint (the learning rate, the parent's weights, the recipe), and training on
    would replace that export."""
    if (out / MANIFEST).is_file():
        done = read_manifest(out)[1].get("finetune", {})
        if done.get("fingerprint") == fp:
            return True
        what = f"{lr_key}={done['lr']:g}, not {lr:g}" if done.get("lr", lr) != lr else "other settings"
        raise RunError(f"{out} was fine-tuned with {what}; pass the settings it was trained with to keep it, "
                       f"or move or remove {out} to train it again with these")
    return False  # an unfinished run's checkpoint of other settings: resume_training refuses it


# ----------------------------------------------------------------------------- training
def train(model: EarlyExitModel, src: Config, ckpt_path: Path, fingerprint: str, epochs: int, lr: float,
          exit_costs: np.ndarray, device: torch.device, warmup_epochs: float = 0.0,
          frozen_backbone: bool = False, teacher: torch.nn.Module | None = None, *,
          splits: Splits, normalise: dict[str, list[float]]) -> dict[str, Any]:
    """Fine-tune ``model``'s weights in place on the training images of ``splits`` (the caller's
    ``nachos.data.Splits``: one load per command), normalised by ``normalise`` (the export manifest's
    ``input``: what validation and deployment use); only its exit heads with ``frozen_backbone`` (the
    backbone keeps its weights and BN statistics); the final classifier learns from ``teacher``'s final
    logits instead of the labels when given. Resumes ``ckpt_path`` when it has this fingerprint."""
    from nachos.data import make_loader

    tc = src.train
    # not the statistics of the data read now: the held-out check covers the validation images only,
    # so a changed train part would train on inputs other than those the export sees
    loader = make_loader(src, splits.train_x, splits.train_y, device, train=True, seed=src.seed,
                         mean=normalise["mean"], std=normalise["std"])
    fmt = memory_format(tc.channels_last, device)  # as the supernet and the static baselines train
    net = model.static_net().to(device, memory_format=fmt)
    net.backbone_grad = src.exits.backbone_grad
    # the supernet's own member loss, for the one subnet this export is (trained from the labels)
    learned_macs = src.exits.criterion == "learned" and src.exits.w_macs > 0
    costs_t = torch.as_tensor(exit_costs, dtype=torch.float32, device=device)
    costs = (lambda _arch: costs_t) if learned_macs else None
    arch = Arch.from_dict(model.description()["arch"])
    autocast = autocast_factory(device, tc.amp)
    if teacher is not None:
        teacher = teacher.to(device, memory_format=fmt).eval().requires_grad_(False)

    def batch_loss(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        target = None
        if teacher is not None:
            with torch.no_grad(), autocast():
                target = teacher(x)[-1].float()
        loss, result = member_loss(net, arch, x, y, target, src, costs, None, step, autocast)
        return loss, result.final_logits

    info = fit(net, loader, batch_loss, tc=tc, lr=lr, epochs=epochs, warmup_epochs=warmup_epochs,
               ckpt_path=ckpt_path, fingerprint=fingerprint, desc="finetune", lr_hint="lower export.finetune_lr",
               fmt=fmt, device=device, frozen=net.backbone_modules() if frozen_backbone else None)
    net.backbone_grad = 1.0  # a training setting: the export runs as any other
    return {"epochs": epochs, "lr": lr, "warmup_epochs": warmup_epochs, **info}


# ----------------------------------------------------------------------------- one export
def finetune_export(folder: str | Path, cfg: Config) -> Path:
    """Fine-tune (or retrain) one export; returns the new export folder (``finetuned_name``) next to it."""
    from eval.evaluate import choose_thresholds, search_grid, source_config, threshold_scorer, validation_cache
    from nachos.data import load_splits, make_loader
    from search.scoring import score_direct

    folder, m = read_manifest(folder)
    src = source_config(m, cfg)
    init, epochs = cfg.export.finetune_init, cfg.export.finetune_epochs
    # exits trained on a frozen static backbone may go on to train jointly with it (two stages)
    if "finetune" in m and not (init == "inherited" and m["finetune"].get("init") == "static"):
        raise RunError(f"{folder} is already a fine-tuned export; fine-tune its parent {m['finetune']['parent']} "
                       "instead (only exits trained on a static backbone, export.finetune_init=static, are trained "
                       "further, with export.finetune_init=inherited)")
    if init == "static" and cfg.export.finetune_exit_weight == 0:
        raise RunError("export.finetune_exit_weight=0 with export.finetune_init=static trains nothing (the backbone is "
                       "frozen and the exits' loss is off); train the heads first, then the no-exit control from "
                       "that export with export.finetune_init=inherited")
    # from scratch the network gets what the static baselines get, so the two compare like for like
    lr, warmup = (cfg.export.finetune_lr, 0.0) if init == "inherited" else (src.train.lr, src.train.warmup_epochs)
    weight, grad = cfg.export.finetune_exit_weight, cfg.exits.backbone_grad
    if init == "static" and grad != 1.0:
        raise RunError(f"exits.backbone_grad={grad:g} with export.finetune_init=static: the backbone is frozen, so "
                       "the share of the exits' gradient it gets means nothing; leave exits.backbone_grad at 1")
    teacher_kind = cfg.export.finetune_teacher
    if init == "static" and teacher_kind != "none":
        raise RunError("export.finetune_teacher=static with export.finetune_init=static: the frozen backbone is the "
                       "teacher already; distil in the joint stage that follows (export.finetune_init=inherited "
                       "on the -heads export)")
    src = with_exit_weight(src, weight, grad)  # (in the fingerprint through src.exits)
    out = folder.parent / finetuned_name(folder.name, epochs, init, weight, grad, teacher_kind)
    ckpt_path = out.with_name(out.name + ".pt")
    fp = _fingerprint(m, src, init, epochs, lr, warmup)
    static = None
    if init == "static" or teacher_kind == "static":  # the export folder sits in <run_dir>/export/
        static = static_backbone(folder.parent.parent, m["arch_key"], src.train.epochs, data_split(src))
        kd = "" if teacher_kind == "none" else teacher_kind  # (keeps the fingerprints of heads-only exports)
        fp = hashlib.sha256((fp + kd + static[0]["fingerprint"]).encode()).hexdigest()[:16]
    if finished_with(out, fp, lr, "export.finetune_lr" if init == "inherited" else "train.lr"):
        print(f"{out.name}: already fine-tuned with these settings", file=sys.stderr)
        return out
    device = resolve_device(cfg.device)
    seed_everything(src.seed, cfg.deterministic)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model = load_exported(folder, device)
    exit_costs = np.asarray(m["macs"]["exit_costs"], dtype=np.float64)
    splits = load_splits(src)
    splits.check_held_out(m["source"].get("held_out_digest"), folder,
                          "its validation figures, and the thresholds chosen on them, would count images the "
                          "supernet trained on", "Fine-tune with the data it was exported with (that run's data.root "
                          "and data.cache_dir)")
    if static is not None:  # its split's settings matched (static_backbone); its held-out images must too
        splits.check_held_out(static[0].get("held_out_digest"), static[1],
                              "it trained on some of this export's validation images, where the thresholds are "
                              "chosen", "Train the static baseline again with this run's data: nachos baseline "
                              "--config <config> <export folder>")
    val_loader = make_loader(src, splits.val_x, splits.val_y, device, train=False, seed=src.seed,
                             mean=m["input"]["mean"], std=m["input"]["std"])
    before_cache = validation_cache(model, val_loader)
    before_acc, _, before_macs = score_direct(before_cache, tuple(range(before_cache.num_positions)),
                                              np.asarray(m["thresholds"]), m["criterion"], exit_costs)

    if init in ("scratch", "static"):
        seed_everything(src.seed, cfg.deterministic)  # seeded as the static baselines are
        model.static_net().load_state_dict(StaticEENet.from_description(m["description"]).state_dict())
    if init == "static":
        load_static_backbone(model.static_net(), static[1])
    teacher = load_static_network(static[1], model.static_net()) if teacher_kind == "static" else None
    t0 = time.perf_counter()
    info = train(model, src, ckpt_path, fp, epochs, lr, exit_costs, device, warmup, frozen_backbone=init == "static",
                 teacher=teacher, splits=splits, normalise=m["input"])
    if static is not None:
        info["static_baseline" if init == "static" else "teacher"] = {
            "tag": static[0]["tag"], "checkpoint": str(static[1]), "fingerprint": static[0]["fingerprint"],
            "test_accuracy": static[0]["test_accuracy"]}
    cache = validation_cache(model, val_loader)
    thresholds, idx, _, _ = choose_thresholds(threshold_scorer(cache, search_grid(src), m["criterion"], exit_costs),
                                              budget=float(m["expected_macs"]))
    tuned = EarlyExitModel(model.static_net(), thresholds, m["criterion"], m["input"]["mean"],
                           m["input"]["std"]).to(device).eval()
    after = Exporter.validation_figures(tuned, val_loader, exit_costs)[0]
    after["search"] = m["validation"].get("search")
    info.update(parent=folder.name, init=init, parent_init=m.get("finetune", {}).get("init"), exit_weight=weight,
                backbone_grad=grad, fingerprint=fp, seconds=time.perf_counter() - t0, device=str(device),
                threshold_budget=float(m["expected_macs"]), parent_thresholds=m["thresholds"],
                val_before={"accuracy": before_acc, "expected_macs": before_macs,
                            "final_classifier_accuracy": float(before_cache.correct[-1].mean())},
                val_after={"accuracy": after["accuracy"], "expected_macs": after["expected_macs"],
                           "final_classifier_accuracy": float(cache.correct[-1].mean())})
    manifest = dict(m, id=out.name, thresholds=thresholds, threshold_idx=idx,
                    threshold_source="re-chosen on validation after fine-tuning",
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    expected_macs=after["expected_macs"], validation=after, finetune=info, format=FORMAT)
    for stale in ("checks", "onnx"):  # write_export records what it writes
        manifest.pop(stale, None)
    write_export(out, tuned, manifest, torchscript=cfg.export.torchscript, onnx=cfg.export.onnx,
                 opset=cfg.export.onnx_opset, check_x=check_images(src, splits))
    ckpt_path.unlink(missing_ok=True)  # the export holds the weights now
    return out


def finetune_command(cfg: Config, args: Any) -> int:
    from eval.evaluate import each_export_dir
    from eval.export import write_index

    config_path = getattr(args, "config", None)
    folders = each_export_dir(getattr(args, "export_dirs", None), lambda d: parents(cfg, d, config_path))
    e = cfg.export
    print(f"fine-tuning {len(folders)} export(s), {e.finetune_epochs} epochs from {e.finetune_init} weights"
          + (f" at lr {e.finetune_lr:g}" if e.finetune_init == "inherited" else " with the run's train.lr"),
          file=sys.stderr)
    for folder in folders:
        out = finetune_export(folder, cfg)
        ft = read_manifest(out)[1]["finetune"]
        b, a = ft["val_before"], ft["val_after"]
        print(f"  {out.name}: val acc {b['accuracy']:.4f} -> {a['accuracy']:.4f} at expected MACs "
              f"{b['expected_macs'] / 1e6:.3f} M -> {a['expected_macs'] / 1e6:.3f} M (final classifier "
              f"{b['final_classifier_accuracy']:.4f} -> {a['final_classifier_accuracy']:.4f}), "
              f"{ft['train_seconds']:.0f} s")
    if folders and folders[0].parent == export_root(cfg):
        write_index(cfg)
    print("evaluate them on the test split with: nachos eval --config <config>")
    return 0


__all__ = ["finetune_export", "finetuned_name", "finetune_command", "parents"]
