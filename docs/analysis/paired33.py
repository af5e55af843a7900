"""Session 33: are the 80-epoch gaps between the four near-equal-cost backbones (hand, near32 pick, C, D) larger
than the image sampling noise of the splits? Per image correctness of each static network (run folders
near32pick-s0/s1, baselines/*-e80.pt) on its seed's validation split and on the test split; gap to the hand
network, mean over seeds, with a paired bootstrap over images (2,000 resamples). Session 34 added the last lines:
per pair, the share of validation images exactly one of the two gets right (d), and how many validation images one
seed would need for a 95% half-width of 0.5 points on the gap (1.96^2 (d - gap^2) / 0.005^2, binomial pairs; image
sampling only, not the spread between training seeds; telling a true 0.5-point gap from none 80% of the time needs
about twice as many).
Needs the run folders (checkpoints are not archived). Usage: .venv/bin/python docs/analysis/paired33.py"""
import json
from pathlib import Path

import numpy as np
import torch

from nachos.config import load_config
from nachos.data import load_splits, make_loader
from supernet.space import Arch, SearchSpace
from supernet.static import StaticEENet

torch.set_num_threads(2)
NAMES = {"w16[k3e1] w24[k3e3,k3e3] w32[k3e3,k3e3] w48[k3e3,k3e3] w64[k3e3,k3e3] f128": "hand",
         "w16[k5e3] w24[k3e3,k3e3] w32[k5e2] w48[k5e3,k5e2] w128[k5e3] f128": "pick",
         "w16[k5e3] w24[k3e3,k3e3,k5e3] w32[k5e2] w48[k5e3] w128[k5e3] f128": "C",
         "w16[k3e3] w40[k3e3,k5e2] w32[k3e2] w48[k3e2] w64[k3e2,k5e2] f128": "D"}
correct: dict[str, dict[str, dict[int, np.ndarray]]] = {"val": {}, "test": {}}
for seed in (0, 1):
    cfg = load_config(f"runs/near32pick-s{seed}/config.yaml")
    splits = load_splits(cfg)
    space = SearchSpace.from_config(cfg.space)
    loaders = {"val": (splits.val_x, splits.val_y), "test": (splits.test_x, splits.test_y)}
    for f in sorted(Path(f"runs/near32pick-s{seed}/baselines").glob("*-e80.json")):
        b = json.loads(f.read_text())
        name = NAMES.get(str(Arch.from_dict(b["arch"])))
        if name is None or not f.with_suffix(".pt").is_file():
            continue
        net = StaticEENet.from_config(cfg.space, cfg.exits, Arch.from_dict(b["arch"]), [])
        net.load_state_dict(torch.load(f.with_suffix(".pt"), map_location="cpu", weights_only=False)["model"])
        net.eval()
        for split, (x, y) in loaders.items():
            hits = []
            with torch.no_grad():
                for xb, yb in make_loader(cfg, x, y, "cpu", train=False, seed=seed, mean=splits.mean, std=splits.std):
                    hits.append((net(xb)[-1].argmax(1) == yb).numpy())
            correct[split].setdefault(name, {})[seed] = np.concatenate(hits)
        print(f"seed {seed} {name}: val {correct['val'][name][seed].mean():.4f} "
              f"test {correct['test'][name][seed].mean():.4f} (recorded {b['val_accuracy']:.4f} / "
              f"{b['test_accuracy']:.4f})", flush=True)

rng = np.random.default_rng(0)
for split in ("val", "test"):
    ref = correct[split]["hand"]
    for name, by_seed in correct[split].items():
        if name == "hand" or set(by_seed) != set(ref):
            continue
        gaps = [by_seed[s].mean() - ref[s].mean() for s in sorted(ref)]
        boot = []
        for _ in range(2000):
            # test images are the same in both seeds: one resample serves both; validation splits differ per seed
            idx = {s: rng.integers(0, len(ref[s]), len(ref[s])) for s in ref}
            if split == "test":
                idx = {s: idx[0] for s in ref}
            boot.append(np.mean([by_seed[s][idx[s]].mean() - ref[s][idx[s]].mean() for s in sorted(ref)]))
        lo, hi = np.percentile(boot, [2.5, 97.5])
        seeds = ", ".join(f"{100 * g:+.2f}" for g in gaps)
        print(f"{split:4s} {name:4s} - hand: {100 * np.mean(gaps):+.2f} points (seeds {seeds}); "
              f"95% interval over images {100 * lo:+.2f} .. {100 * hi:+.2f}")

ref = correct["val"]["hand"]
for name, by_seed in correct["val"].items():
    if name == "hand" or set(by_seed) != set(ref):
        continue
    d = np.mean([np.mean(by_seed[s] != ref[s]) for s in sorted(ref)])
    gap = np.mean([by_seed[s].mean() - ref[s].mean() for s in sorted(ref)])
    need = 1.96 ** 2 * (d - gap ** 2) / 0.005 ** 2
    print(f"val  {name:4s} vs hand: disagree on {100 * d:.1f}% of images; a +-0.5-point 95% interval in one seed "
          f"needs {need:,.0f} validation images (this split: {len(ref[0]):,})")
