"""Session 33: zero-cost proxies at initialisation for the backbones trained 80 epochs from scratch
(near32pick-s0/s1 baselines): do any order them as 80 epochs do? Needs the run folders.
Usage: .venv/bin/python docs/analysis/proxy33.py"""
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau

from nachos.config import load_config
from nachos.data import load_splits
from supernet.costs import MacTable
from supernet.space import Arch, SearchSpace
from supernet.static import ConvBnAct, StaticEENet

torch.set_num_threads(2)
cfg = load_config("runs/near32pick-s0/config.yaml")
space = SearchSpace.from_config(cfg.space)
table = MacTable.from_config(cfg)
splits = load_splits(cfg)
mean = torch.tensor(splits.mean).view(1, -1, 1, 1); std = torch.tensor(splits.std).view(1, -1, 1, 1)
g = torch.Generator().manual_seed(0)
idx = torch.randperm(len(splits.train_x), generator=g)[:128]
x = (splits.train_x[idx].float() / 255 - mean) / std
y = splits.train_y[idx]

acc = {}
for run in ("near32pick-s0", "near32pick-s1"):
    for f in sorted(Path(f"runs/{run}/baselines").glob("*-e80.json")):
        b = json.loads(f.read_text())
        a = str(Arch.from_dict(b["arch"]))
        acc.setdefault(a, []).append(b["test_accuracy"])


def naswot(net):
    codes = []
    hooks = [m.act.register_forward_hook(lambda mod, inp, out: codes.append((inp[0] > 0).flatten(1).float()))
             for m in net.modules() if isinstance(m, ConvBnAct)]
    with torch.no_grad():
        net(x[:64])
    for h in hooks:
        h.remove()
    c = torch.cat(codes, 1)
    k = c @ c.t() + (1 - c) @ (1 - c).t()
    return float(torch.linalg.slogdet(k.double())[1])


def synflow(net):
    net = net.double().eval()
    for p in net.parameters():
        p.data.abs_()
    net.zero_grad()
    out = net(torch.ones(1, *x.shape[1:], dtype=torch.double))
    torch.sum(out[-1] if isinstance(out, (list, tuple)) else out).backward()
    s = sum(float((p.detach() * p.grad).abs().sum()) for p in net.parameters() if p.grad is not None)
    return float(np.log(s + 1e-30))


def grad_norm(net):
    net.train(); net.zero_grad()
    out = net(x)
    F.cross_entropy(out[-1] if isinstance(out, (list, tuple)) else out, y).backward()
    return float(sum(p.grad.norm() ** 2 for p in net.parameters() if p.grad is not None) ** 0.5)


rows = []
for a, accs in acc.items():
    arch = space.parse_arch(a)
    vals = {"naswot": [], "synflow": [], "grad_norm": []}
    for seed in range(3):
        for name, fn in (("naswot", naswot), ("synflow", synflow), ("grad_norm", grad_norm)):
            torch.manual_seed(seed)
            net = StaticEENet.from_config(cfg.space, cfg.exits, arch, [])
            vals[name].append(fn(net))
    params = sum(p.numel() for p in StaticEENet.from_config(cfg.space, cfg.exits, arch, []).parameters())
    rows.append({"arch": a, "macs": table.peak_cost(arch, []) / 1e6, "acc80": float(np.mean(accs)), "n": len(accs),
                 "params": params / 1e6, "blocks": sum(arch.depths),
                 **{k: float(np.mean(v)) for k, v in vals.items()},
                 **{k + "_sd": float(np.std(v, ddof=1)) for k, v in vals.items()}})
rows.sort(key=lambda r: -r["acc80"])
keys = ["macs", "params", "blocks", "naswot", "synflow", "grad_norm"]
print(f"{'arch':70s} {'acc80':>6s} n " + " ".join(f"{k:>9s}" for k in keys))
for r in rows:
    print(f"{r['arch']:70s} {100 * r['acc80']:6.2f} {r['n']} " + " ".join(f"{r[k]:9.3f}" for k in keys))
print("init-seed sd (3 seeds): " + ", ".join(f"{k} {max(r[k + '_sd'] for r in rows):.3f}"
                                             for k in ("naswot", "synflow", "grad_norm")))
print("Kendall tau with 80-epoch test accuracy, all networks / the near-equal-cost ones (2.3-2.6 M):")
near = [r for r in rows if 2.3 <= r["macs"] <= 2.6]
for k in keys:
    t_all = kendalltau([r[k] for r in rows], [r["acc80"] for r in rows])[0]
    t_near = kendalltau([r[k] for r in near], [r["acc80"] for r in near])[0] if len(near) >= 2 else float("nan")
    print(f"  {k:10s} {t_all:+.2f} (n={len(rows)})  {t_near:+.2f} (n={len(near)})")
