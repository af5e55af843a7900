"""Training-input throughput: our on-device ``TensorLoader`` against torchvision's usual recipe.

Both sides do the same work per image (random crop with 4 px zero padding, horizontal flip,
normalise) on the same CIFAR-10 training images. The baseline is ``ImageFolder`` + PIL
transforms + ``DataLoader(num_workers=2)`` over JPEG files extracted once into the git-ignored
``data/bench/``. Each side gets one warm-up epoch (worker start-up, page cache) before timing.
"""
from __future__ import annotations

import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from bench import bench_line
from nachos.config import load_config
from nachos.data import CIFAR10_TARBALL, TensorLoader, find_source, load_splits

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "data" / "bench"


def extract_subset(tarball: Path, per_class: int) -> Path:
    """The first ``per_class`` training JPEGs of every class as an ImageFolder tree (done once)."""
    target = BENCH_DIR / f"cifar10-train-{per_class}"
    done = target / ".complete"
    if done.is_file():
        return target
    taken: dict[str, int] = {}
    with tarfile.open(tarball) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or parts[-3] != "train":
                continue
            cls = parts[-2]
            if taken.get(cls, 0) >= per_class:
                continue
            out = target / cls / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
            taken[cls] = taken.get(cls, 0) + 1
    done.write_text("ok\n")
    return target


def images_per_second(epoch: Callable[[], Iterable[Any]], min_seconds: float) -> float:
    """Rate over whole epochs after one warm-up epoch, timing at least ``min_seconds``."""
    for _ in epoch():
        pass
    images, start = 0, time.perf_counter()
    while True:
        for x, _ in epoch():
            images += len(x)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return images / elapsed


def torchvision_rate(folder: Path, mean: tuple, std: tuple, min_seconds: float) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])
    loader = DataLoader(datasets.ImageFolder(str(folder), transform=tf), batch_size=256, shuffle=True,
                        num_workers=2, drop_last=True, persistent_workers=True)
    return images_per_second(lambda: loader, min_seconds)


def tensorloader_rate(x: torch.Tensor, y: torch.Tensor, mean: tuple, std: tuple, min_seconds: float) -> float:
    loader = TensorLoader(x, y, 256, mean=mean, std=std, device="cpu", train=True, seed=0, crop_padding=4,
                          hflip=True)
    return images_per_second(lambda: loader, min_seconds)


def run(args: Any) -> None:
    per_class = 100 if args.quick else 500
    min_seconds = 1.0 if args.quick else 3.0
    cfg = load_config(None, {"data.name": "cifar10", "data.train_subset": per_class * 10}, device_type="cpu")
    source = find_source(cfg)
    if source.kind != "cifar10-tar":
        raise RuntimeError(f"the benchmark needs {CIFAR10_TARBALL}; found {source.kind} at {source.path}")
    splits = load_splits(cfg)
    folder = extract_subset(source.path, per_class)
    ours = tensorloader_rate(splits.train_x, splits.train_y, splits.mean, splits.std, min_seconds)
    theirs = torchvision_rate(folder, splits.mean, splits.std, min_seconds)
    # the two rates are context for the ratio, not goals: a goal of >= 0 could never be missed
    print(f"data pipeline: tensor loader {ours:.4g} img/s, torchvision with 2 workers {theirs:.4g} img/s", flush=True)
    bench_line("data_pipeline_speedup", ours / theirs, "x", ">=", 10)
