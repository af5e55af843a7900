"""Does early exit pay off for real? Batch-1 CPU latency and MACs of an exported early-exit model.

The model: of the trained CIFAR-10 exports under ``runs/*/export/``, the one whose exits promise
the largest saving (1 - expected / backbone MACs; the question is whether a promised saving
shows up as time), or the folder named by
``NACHOS_BENCH_EXPORT``). Without one, a stand-in is built and exported the same way: the
largest subnet of ``configs/cifar10.yaml`` from a random-weight supernet, BN recalibrated on
training batches, exits after stages 0 and 2 with thresholds set on validation images so that
about half the samples leave at the first exit and half of the rest at the second (the output
says so). The figures:

- ``early_exit_latency_ratio``: mean batch-1 latency of the early-exit model over CIFAR-10 test
  images / that of the same backbone run to the end without heads; each image's figure is the
  median of 3 calls, the two models alternating (one CPU thread: what batch-1 inference on a
  small CPU looks like, and the least noisy on a shared machine).
- ``expected_macs_prediction_error``: the expected MACs the export predicts (validation exit
  rates x per-exit costs, in arch.json) vs the MACs of the exits actually taken on the test
  images (observed counts x the same costs), relative, in %.
- (printed, no goal) the MACs that actually ran, counted by ``torch.utils.flop_counter`` on the
  batched early-exit run, vs the cost model on the exits taken: the saving is real compute.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import bench_line, one_thread

REPO = Path(__file__).resolve().parents[1]


def find_trained_export() -> Path | None:
    named = os.environ.get("NACHOS_BENCH_EXPORT")
    if named:
        return Path(named)
    found = []
    for manifest in REPO.glob("runs/*/export/*/arch.json"):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if m.get("config", {}).get("data", {}).get("name") == "cifar10":
            saving = 1.0 - float(m.get("expected_macs", 0.0)) / max(float(m.get("macs", {}).get("backbone", 1.0)), 1.0)
            found.append((saving, manifest.stat().st_mtime, manifest))
    return max(found)[2].parent if found else None


def build_stand_in(folder: Path, quick: bool) -> Path:
    """Export the largest random-weight subnet with thresholds splitting the samples (see docstring)."""
    from eval.export import MAC_CONVENTION, write_export
    from eval.runtime import EarlyExitModel
    from exits.policies import decide_exits, exit_confidence, exit_scores
    from nachos.config import config_to_dict, load_config
    from nachos.data import derived_generator, load_splits, make_loader
    from supernet.bn import recalibrate_bn
    from supernet.costs import profile_exit_costs
    from supernet.network import create_supernet

    cfg = load_config(REPO / "configs" / "cifar10.yaml", ["wandb.mode=disabled", "device=cpu",
                                                           f"data.cache_dir={REPO / 'data' / 'cache'}"],
                      device_type="cpu")
    torch.manual_seed(cfg.seed)
    sup = create_supernet(cfg).eval()
    space = sup.space
    arch, exits = space.largest(), [0, 2]
    s = load_splits(cfg)
    pick = torch.randperm(len(s.train_x), generator=derived_generator(cfg.seed, "bn-calib"))[:512]
    calib = make_loader(cfg, s.train_x[pick], s.train_y[pick], "cpu", train=False, seed=cfg.seed, mean=s.mean,
                        std=s.std)
    calib.batch_size = 256
    sup.set_active(arch)
    recalibrate_bn(sup, calib, 2)
    net = sup.extract(arch, exits).eval()
    n_val = 1000 if quick else len(s.val_y)
    pick_val = torch.randperm(len(s.val_y), generator=derived_generator(cfg.seed, "bench-val"))[:n_val]
    val = make_loader(cfg, s.val_x[pick_val], s.val_y[pick_val], "cpu", train=False, seed=cfg.seed, mean=s.mean,
                      std=s.std)
    with torch.no_grad():
        conf = torch.cat([torch.stack([exit_confidence(o, cfg.exits.criterion) for o in net(x)[:-1]])
                          for x, _ in val], dim=1)
    scores = exit_scores(conf, cfg.exits.criterion)
    t0 = float(scores[0].median())
    t1 = float(scores[1][scores[0] < t0].median())
    thresholds = [t0, t1]
    costs = profile_exit_costs(net)
    taken = decide_exits(conf, thresholds, cfg.exits.criterion)
    counts = torch.bincount(taken, minlength=3).numpy()
    model = EarlyExitModel(net, thresholds, cfg.exits.criterion, s.mean, s.std)
    manifest: dict[str, Any] = {
        "format": "nachos-export", "version": 1, "id": folder.name, "stand_in": True,
        "arch": arch.to_dict(), "arch_str": str(arch), "exits": exits, "thresholds": thresholds,
        "criterion": cfg.exits.criterion, "num_classes": space.num_classes, "classes": list(s.classes),
        "input": {"shape": list(model.input_shape), "dtype": "float32", "layout": "NCHW", "mean": list(s.mean),
                  "std": list(s.std)},
        "expected_macs": float(counts @ costs / counts.sum()), "peak_macs": float(costs[-1]),
        "params": sum(p.numel() for p in net.parameters()),
        "macs": {"convention": MAC_CONVENTION, "source": "ptflops", "exit_costs": costs.tolist(),
                 "backbone": float(profile_exit_costs(sup.extract(arch, []))[-1])},
        "validation": {"split": "val", "images": n_val, "exit_counts": counts.tolist(),
                       "exit_rates": (counts / counts.sum()).tolist(), "expected_macs": float(counts @ costs / n_val)},
        "config": config_to_dict(cfg), "description": net.description(),
    }
    return write_export(folder, model, manifest, torchscript=False, onnx=False, opset=17)


@one_thread()
def run(args: argparse.Namespace) -> None:
    from eval.evaluate import source_config, test_order, time_pair
    from eval.export import load_exported, read_manifest
    from nachos.config import load_config
    from nachos.data import load_splits, make_loader

    quick = bool(getattr(args, "quick", False))
    n_lat, n_macs = (100, 2000) if quick else (300, 10000)
    tmp = tempfile.TemporaryDirectory(prefix="nachos-bench-")
    try:
        folder = find_trained_export()
        if folder is None:
            start = time.perf_counter()
            folder = build_stand_in(Path(tmp.name) / "stand-in", quick)
            print(f"# no trained CIFAR-10 export under runs/*/export/: built a stand-in in "
                  f"{time.perf_counter() - start:.0f} s (largest subnet of configs/cifar10.yaml, RANDOM weights, exits "
                  "after stages 0 and 2, thresholds set on validation images so that about half the samples leave at "
                  "the first exit); its accuracy means nothing, its latency and MACs do", flush=True)
        else:
            print(f"# export {folder}", flush=True)
        folder, m = read_manifest(folder)
        model = load_exported(folder)
        cfg = source_config(m, load_config(None, {"device": "cpu", "data": {"cache_dir": str(REPO / "data" / "cache")}},
                                           device_type="cpu"))
        s = load_splits(cfg)
        order = test_order(s.test_y, s.num_classes, n_macs, cfg.seed)
        n = len(order)
        loader = make_loader(cfg, s.test_x[order], s.test_y[order], "cpu", train=False, seed=0,
                             mean=m["input"]["mean"], std=m["input"]["std"])
        costs = np.asarray(m["macs"]["exit_costs"], dtype=np.float64)

        # MACs: exits taken on test images, and what actually ran
        from torch.utils.flop_counter import FlopCounterMode

        counts = np.zeros(len(costs), dtype=np.int64)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            for x, _ in loader:
                counts += np.bincount(model(x)[1].numpy(), minlength=len(costs))
        observed = float(counts @ costs / n)
        predicted = float(m["expected_macs"])
        executed = counter.get_total_flops() / 2 / n  # flop_counter counts a multiply-add as 2
        print(f"# exits taken on {n} test images: rates {np.round(counts / n, 4).tolist()} (validation "
              f"{np.round(m['validation']['exit_rates'], 4).tolist()}); expected MACs predicted "
              f"{predicted / 1e6:.4f} M, "
              f"from the exits taken {observed / 1e6:.4f} M; peak {costs[-1] / 1e6:.4f} M, backbone alone "
              f"{m['macs']['backbone'] / 1e6:.4f} M", flush=True)
        print(f"# MACs that actually ran (flop counter, batched early exit): {executed / 1e6:.4f} M per image vs "
              f"{observed / 1e6:.4f} M by the cost model for the same exits "
              f"({100 * abs(executed - observed) / observed:.3f}% apart; biases are not in the counter)", flush=True)

        # latency at batch 1
        timed = make_loader(cfg, s.test_x[order[:n_lat]], s.test_y[order[:n_lat]], "cpu", train=False, seed=0,
                            mean=m["input"]["mean"], std=m["input"]["std"])
        images = [img.unsqueeze(0) for x, _ in timed for img in x]
        with torch.inference_mode():
            t_ee, t_full = time_pair(images, model, model.run_backbone, 20, torch.device("cpu"), repeats=3)
            exits_timed = np.array([int(model(img)[1]) for img in images])
        # mean over images of per-image medians: the expected latency (the counterpart of expected
        # MACs), without letting a load spike of the shared machine into any single image's figure
        ee, full = float(np.mean(t_ee)), float(np.mean(t_full))
        print(f"# batch-1 latency on cpu (1 thread) over {len(images)} test images (each the median of 3 calls): "
              f"early exit mean {1e3 * ee:.3f} ms (median {1e3 * np.median(t_ee):.3f} ms) vs backbone to the end mean "
              f"{1e3 * full:.3f} ms (median {1e3 * np.median(t_full):.3f} ms); exits taken "
              f"{np.bincount(exits_timed, minlength=len(costs)).tolist()}", flush=True)
        bench_line("early_exit_latency_ratio", ee / full, "x", "<=", 1.0)
        bench_line("expected_macs_prediction_error", 100 * abs(predicted - observed) / observed, "%", "<=", 1)
    finally:
        tmp.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args())
