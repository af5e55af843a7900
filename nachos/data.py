"""Datasets decoded once into a uint8 tensor cache, seeded class-balanced splits, and an on-device loader.

Every source (CIFAR-10 JPEG tarball or torchvision pickles, CIFAR-100 pickles, MNIST idx files,
any ImageFolder tree) is decoded a single time into ``<cache_dir>/<name>-<id>.pt``: uint8 NCHW
images, int64 labels, class names and per-channel statistics. The file stores a fingerprint of
its source; a changed source or an unreadable file is rebuilt on the next load. Later loads
memory-map the file, so they cost well under a second.

``TensorLoader`` keeps a whole split on the device and builds batches with tensor ops only
(no per-image Python), which is what lets a 2-core CPU feed a small network.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import pickle
import sys
import tarfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nachos.config import Config
from nachos.runtime import RunError, atomic_torch_save, ensure_dir

REPO = Path(__file__).resolve().parents[1]
CACHE_VERSION = 1  # bump when the decoded layout changes, so old caches are rebuilt
CIFAR10_TARBALL = "cifar10-jpg.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
PIL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_CACHE_TENSORS = ("train_x", "train_y", "test_x", "test_y")


# ----------------------------------------------------------------------------- data classes
@dataclass
class Dataset:
    """A source decoded as it ships: its train and test parts, before any validation split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cache_path: Path | None = None


@dataclass
class Splits:
    """uint8 NCHW CPU images and int64 labels for train / val / test, plus what normalises them."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cache_path: Path | None = None
    train_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64), repr=False)
    val_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64), repr=False)
    # the images held out of training, hashed before data.val_subset thins them: a search checks that
    # a supernet held out these very images (the split's settings alone do not fix them: an image
    # added to or removed from a folder source moves every later one), while it may score on fewer
    held_out_digest: str = ""

    def check_held_out(self, saved: str | None, path: Path, harm: str, fix: str) -> None:
        """Refuse a checkpoint (at ``path``) that held out other images than these: ``harm`` says what
        using it here would do, ``fix`` what to run instead. Checkpoints older than the digest (``saved``
        None) pass: their split's settings were checked."""
        if saved is not None and saved != self.held_out_digest:
            raise RunError(f"the validation images drawn here are not those {path} held out, though the split's "
                           "settings match: the data changed (images added or removed, another data.root, or "
                           "JPEGs decoded by another Pillow/libjpeg: then use the data cache of the machine that "
                           f"trained it, data.cache_dir); {harm}. {fix}")

    def test_digest(self, order: torch.Tensor) -> str:
        """Which test images ``order`` scores, hashed (their order left out: it does not change an
        accuracy), so that two accuracies are set side by side only when measured on the same images:
        the size alone does not tell another data set or another seed's ``export.test_subset``."""
        index = order.sort().values
        return tensor_digest(self.test_x[index], self.test_y[index])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class Source:
    """Where a dataset was found and in which format."""

    kind: str  # cifar10-tar, cifar10-pickle, cifar100-pickle, mnist-idx, imagefolder
    path: Path
    files: tuple[Path, ...]  # what the fingerprint covers


# ----------------------------------------------------------------------------- finding sources
def search_roots(cfg: Config) -> list[Path]:
    """data.root first, then the shared offline copies next to the repo, then the project's data/."""
    candidates = [Path(cfg.data.root).expanduser()] if cfg.data.root else []
    candidates += [REPO.parent / "shared" / "datasets", REPO / "data", Path("data")]
    roots: list[Path] = []
    for path in candidates:
        if all(path.resolve() != r.resolve() for r in roots):
            roots.append(path)
    return roots


def _listing(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.rglob("*") if p.is_file()))


def _cifar10_pickles_in(root: Path) -> Source | None:
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / "batches.meta").is_file() and (folder / "test_batch").is_file():
            # only the dataset's own files: a root may also hold the cache (or anything else), and
            # fingerprinting those would rebuild the cache on every load
            files = (folder / "batches.meta", *sorted(folder.glob("data_batch_*")), folder / "test_batch")
            return Source("cifar10-pickle", folder, files)
    return None


def _cifar10_tar_in(root: Path) -> Source | None:
    for tarball in (root / CIFAR10_TARBALL, root):
        if tarball.is_file() and tarball.name.endswith((".tar.gz", ".tgz", ".tar")):
            return Source("cifar10-tar", tarball, (tarball,))
    return None


def _cifar100_in(root: Path) -> Source | None:
    for folder in (root / "cifar-100-python", root):
        if all((folder / n).is_file() for n in ("train", "test", "meta")):
            return Source("cifar100-pickle", folder, tuple(folder / n for n in ("train", "test", "meta")))
    return None


def _mnist_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _mnist_in(root: Path) -> Source | None:
    for folder in (root / "MNIST" / "raw", root / "mnist" / "raw", root):
        files = [_mnist_file(folder, stem) for stem in MNIST_FILES.values()]
        if all(files):
            return Source("mnist-idx", folder, tuple(files))  # type: ignore[arg-type]
    return None


def _imagefolder_source(cfg: Config) -> Source:
    root = Path(cfg.data.root).expanduser() if cfg.data.root else None
    if root is None:
        raise RunError("data.name=imagefolder needs data.root=<folder> holding train/<class>/*.jpg and "
                       "test/<class>/*.jpg")
    missing = [s for s in ("train", "test") if not (root / s).is_dir()]
    if missing:
        raise RunError(f"data.name=imagefolder: {root} has no {' or '.join(s + '/' for s in missing)} folder; "
                       f"looked in {root.resolve()}. Point data.root=... at a folder with train/<class>/ "
                       "and test/<class>/ image subfolders")
    return Source("imagefolder", root, _listing(root / "train") + _listing(root / "test"))


# Each dataset's formats, best first. Every root is searched for one format before the next, so the
# lossless CIFAR-10 pickles win over the lossy JPEG tarball in whichever roots each lies; searching
# root by root let the shared tarball shadow pickles in data/. Without pickles nothing changes.
_FINDERS = {"cifar10": (_cifar10_pickles_in, _cifar10_tar_in), "cifar100": (_cifar100_in,), "mnist": (_mnist_in,)}
_KINDS = {"cifar10-pickle": "torchvision pickles, lossless", "cifar10-tar": "JPEG tarball, lossy",
          "cifar100-pickle": "torchvision pickles", "mnist-idx": "idx files", "imagefolder": "image folders"}
_EXPECTED = {
    "cifar10": f"{CIFAR10_TARBALL} (ImageFolder JPEGs) or torchvision's cifar-10-batches-py/",
    "cifar100": "torchvision's cifar-100-python/",
    "mnist": "MNIST/raw/ with the four idx files (train-images-idx3-ubyte[.gz], ...)",
}


def _download(cfg: Config) -> None:
    import torchvision.datasets as tvd

    target = Path(cfg.data.root).expanduser() if cfg.data.root else REPO / "data"
    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST}[cfg.data.name]
    try:
        for train in (True, False):
            cls(str(target), train=train, download=True)
    except Exception as err:  # network errors come in many types; all mean the same to the user
        raise RunError(f"downloading {cfg.data.name} into {target} failed ({err}); without internet, copy the "
                       f"data there by hand ({_EXPECTED[cfg.data.name]})") from None


def _first(found: Iterable[Source | None]) -> Source | None:
    """The first source found; ``found`` is lazy, so later finders do not run."""
    return next((s for s in found if s is not None), None)


def find_source(cfg: Config) -> Source:
    """Locate the dataset's files, downloading them only when data.download allows it."""
    name = cfg.data.name
    if name == "imagefolder":
        return _imagefolder_source(cfg)
    roots = search_roots(cfg)
    best, *fallbacks = _FINDERS[name]
    if cfg.data.root and Path(cfg.data.root).expanduser().is_file():
        # a file named by data.root is the user's explicit choice, whatever lies in the other roots
        source = _first(f(roots[0]) for f in _FINDERS[name])
        if source is not None:
            return source
    source = _first(map(best, roots))
    if source is None and cfg.data.download:  # download the best format rather than settle for a fallback
        _download(cfg)
        source = _first(map(best, roots))
    for finder in fallbacks:
        source = source or _first(map(finder, roots))
    if source is not None:
        return source
    places = "\n  ".join(str(r.resolve()) for r in roots)
    raise RunError(f"dataset {name} not found; looked for {_EXPECTED[name]} in:\n  {places}\n"
                   f"Provide it with data.root=<folder holding it>, or set data.download=true when online")


# ----------------------------------------------------------------------------- decoding
def _decode_bytes(data: bytes, channels: int, where: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        # torchvision 0.29 warns on every call that decoding moves to torchcodec; it still
        # works, and 60,000 identical warnings would bury everything else a run prints
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    except RuntimeError as err:
        raise RunError(f"cannot decode image {where}: {err}") from None


def _split_member(name: str) -> tuple[str, str, str] | None:
    """'<prefix>/train/<class>/<file>' -> (split, class, file); None for anything else."""
    parts = name.replace("\\", "/").split("/")
    if len(parts) < 3 or parts[-3] not in ("train", "test") or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-3], parts[-2], parts[-1]


def _stack(images: list[torch.Tensor], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _decode_image_tarball(path: Path, channels: int = 3) -> tuple:
    members: list[tuple[tuple[str, str, str], bytes]] = []
    try:
        with tarfile.open(path) as tar, tqdm(desc=f"reading {path.name}", unit="file", mininterval=0.5) as bar:
            for member in tar:
                key = _split_member(member.name) if member.isfile() else None
                if key is not None:
                    members.append((key, tar.extractfile(member).read()))  # type: ignore[union-attr]
                    bar.update()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise RunError(f"cannot read {path}: {err}; replace the file with a good copy") from None
    members.sort(key=lambda m: m[0])  # tar order is arbitrary; sorted order makes indices stable
    classes = sorted({c for (s, c, _), _ in members if s == "train"})
    if not classes or sorted({c for (s, c, _), _ in members if s == "test"}) != classes:
        raise RunError(f"{path} must hold train/<class>/ and test/<class>/ images with the same classes")
    index = {c: i for i, c in enumerate(classes)}
    parts: dict[str, tuple[list[torch.Tensor], list[int]]] = {"train": ([], []), "test": ([], [])}
    shape, first = None, ""
    for (split, cls, fname), data in tqdm(members, desc=f"decoding {path.name}", unit="img", mininterval=0.5):
        where = f"{path}:{split}/{cls}/{fname}"
        image = _decode_bytes(data, channels, where)
        if shape is None:
            shape, first = image.shape, where
        elif image.shape != shape:
            raise RunError(f"{where} is {image.shape[1]}x{image.shape[2]} but {first} is {shape[1]}x{shape[2]}; "
                           "a tarball's images must share one size: resize them, or unpack the tarball and "
                           "read it with data.name=imagefolder, which resizes to space.input_size")
        parts[split][0].append(image)
        parts[split][1].append(index[cls])
    return (*_stack(*parts["train"]), *_stack(*parts["test"]), classes)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except Exception as err:  # a truncated pickle raises anything from EOFError to UnpicklingError
        raise RunError(f"cannot read {path}: {err}; replace it with a good copy") from None


def _cifar_batches(paths: Sequence[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path in tqdm(paths, desc="decoding CIFAR batches", unit="file"):
        entry = _unpickle(path)
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.extend(entry[label_key])
    return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.int64)


def _decode_cifar_pickle(source: Source) -> tuple:
    folder = source.path
    if source.kind == "cifar10-pickle":
        classes = list(_unpickle(folder / "batches.meta")["label_names"])
        train = _cifar_batches(sorted(folder.glob("data_batch_*")), "labels")
        test = _cifar_batches([folder / "test_batch"], "labels")
    else:
        classes = list(_unpickle(folder / "meta")["fine_label_names"])
        train = _cifar_batches([folder / "train"], "fine_labels")
        test = _cifar_batches([folder / "test"], "fine_labels")
    return (*train, *test, classes)


def read_idx(path: Path) -> torch.Tensor:
    """An idx file (optionally gzipped) of unsigned bytes as a uint8 tensor of its stated shape."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise RunError(f"cannot read {path}: {err}; replace it with a good copy") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise RunError(f"{path} is not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise RunError(f"{path} is truncated: its header promises {ndim} dimension sizes but the file has "
                       f"{len(data)} bytes; replace it with a good copy")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise RunError(f"{path} is truncated: expected {math.prod(dims)} values of shape {dims}, found {body.size}")
    return torch.from_numpy(body.copy()).view(*dims)


def _decode_mnist(source: Source) -> tuple:
    files = dict(zip(MNIST_FILES, source.files))
    arrays = {k: read_idx(p) for k, p in tqdm(files.items(), desc="decoding MNIST", unit="file")}
    return (arrays["train_x"].unsqueeze(1), arrays["train_y"].long(),
            arrays["test_x"].unsqueeze(1), arrays["test_y"].long(), [str(i) for i in range(10)])


def _load_pil(path: Path, size: int, channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(PIL_MODES[channels])
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise RunError(f"cannot read image {path}: {err}; delete or replace it") from None
    return torch.from_numpy(arr.reshape(size, size, channels).copy()).permute(2, 0, 1).contiguous()


def _decode_imagefolder(source: Source, size: int, channels: int) -> tuple:
    from torchvision.datasets.folder import find_classes, make_dataset

    found = {}
    for split in ("train", "test"):
        try:
            found[split] = find_classes(str(source.path / split))[0]
        except FileNotFoundError:  # images straight in train/ or test/, with no class subfolders
            raise RunError(f"imagefolder {source.path / split} has no class subfolders; put each class's "
                           f"images in {source.path / split}/<class>/") from None
    if found["train"] != found["test"]:
        # a test class unknown to train would be dropped silently, a train class missing from test untested
        only = {s: sorted(set(found[s]) - set(found[o])) for s, o in (("train", "test"), ("test", "train"))}
        raise RunError(f"imagefolder {source.path}: train/ and test/ must hold the same class folders; only in "
                       f"train/: {only['train'] or 'none'}, only in test/: {only['test'] or 'none'}. "
                       "Add or remove class folders until they match")
    classes = found["train"]
    class_to_idx = {c: i for i, c in enumerate(classes)}
    split_lists = {}
    for split in ("train", "test"):
        try:
            split_lists[split] = make_dataset(str(source.path / split), class_to_idx, extensions=IMAGE_SUFFIXES)
        except FileNotFoundError as err:  # a class folder with no images
            raise RunError(f"imagefolder {source.path}/{split}: {err}") from None
    out: list[Any] = []
    for split in ("train", "test"):
        items = split_lists[split]
        images = [_load_pil(Path(p), size, channels)
                  for p, _ in tqdm(items, desc=f"decoding {split} images", unit="img", mininterval=0.5)]
        out += list(_stack(images, [label for _, label in items]))
    return (*out, classes)


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1]; chunked so float64 copies stay small."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = max(len(x) * x.shape[2] * x.shape[3], 1)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def decode_source(source: Source, cfg: Config) -> Dataset:
    """Decode ``source`` into tensors (the slow path that the cache exists to skip)."""
    if source.kind == "cifar10-tar":
        parts = _decode_image_tarball(source.path)
    elif source.kind in ("cifar10-pickle", "cifar100-pickle"):
        parts = _decode_cifar_pickle(source)
    elif source.kind == "mnist-idx":
        parts = _decode_mnist(source)
    else:
        parts = _decode_imagefolder(source, cfg.space.input_size, cfg.space.in_channels)
    train_x, train_y, test_x, test_y, classes = parts
    # Over the whole train part, validation images included, on purpose: these are unlabelled pixel
    # means, 1e-4 from train-only ones (CIFAR-10: 0.49125, 0.48209, 0.44652 vs 0.49120, 0.48204, 0.44640),
    # and every trained network's normalisation depends on them, so they stay as they are.
    mean, std = channel_stats(train_x)
    return Dataset(train_x.contiguous(), train_y, test_x.contiguous(), test_y, list(classes), mean, std)


# ----------------------------------------------------------------------------- cache
def _decode_params(source: Source, cfg: Config) -> str:
    return f"{cfg.space.input_size}x{cfg.space.in_channels}" if source.kind == "imagefolder" else ""


def fingerprint(source: Source, cfg: Config) -> str:
    """Cheap identity of the source: file contents for a tarball, names/sizes/mtimes for folders."""
    digest = hashlib.sha1(f"v{CACHE_VERSION}|{source.kind}|{_decode_params(source, cfg)}".encode())
    if source.kind == "cifar10-tar":
        with open(source.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for path in source.files:
        st = path.stat()
        rel = path.relative_to(source.path) if path.is_relative_to(source.path) else path
        digest.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(source: Source, cfg: Config) -> Path:
    ident = hashlib.sha1(f"{source.kind}|{source.path.resolve()}|{_decode_params(source, cfg)}".encode())
    return Path(cfg.data.cache_dir).expanduser() / f"{cfg.data.name}-{ident.hexdigest()[:10]}.pt"


def _read_cache(path: Path, key: str) -> Dataset | None:
    """The cached dataset, or None (with a note on stderr) when it is missing, stale or damaged."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, mmap=True, weights_only=True)
        if blob.get("version") != CACHE_VERSION or blob.get("key") != key:
            print(f"note: the source of {path} changed; rebuilding the cache", file=sys.stderr)
            return None
        tensors = [blob[k] for k in _CACHE_TENSORS]
        ok = (tensors[0].dtype == tensors[2].dtype == torch.uint8 and tensors[0].dim() == 4
              and len(tensors[0]) == len(tensors[1]) and len(tensors[2]) == len(tensors[3]))
        if not ok:
            raise ValueError("unexpected tensor shapes or types")
        return Dataset(*tensors, list(blob["classes"]), tuple(blob["mean"]), tuple(blob["std"]), path)
    except Exception as err:  # any damage (truncation, foreign file, missing keys) means: rebuild
        print(f"note: cache {path} is unreadable ({type(err).__name__}: {err}); rebuilding it", file=sys.stderr)
        return None


def _write_cache(path: Path, key: str, data: Dataset) -> None:
    blob = {k: getattr(data, k) for k in _CACHE_TENSORS}
    blob.update(version=CACHE_VERSION, key=key, classes=list(data.classes),
                mean=list(data.mean), std=list(data.std))
    ensure_dir(path.parent)
    atomic_torch_save(blob, path)


def load_dataset(cfg: Config) -> Dataset:
    """The whole source dataset (train and test as shipped), from the cache or decoded into it."""
    source = find_source(cfg)
    # said on every load: which copy a run read is otherwise invisible, and pickles and tarball differ
    print(f"note: {cfg.data.name} from {source.path} ({_KINDS[source.kind]})", file=sys.stderr)
    key = fingerprint(source, cfg)
    path = cache_path(source, cfg)
    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    data = decode_source(source, cfg)
    _write_cache(path, key, data)
    data.cache_path = path
    return data


# ----------------------------------------------------------------------------- splits
def derived_generator(seed: int, purpose: str) -> torch.Generator:
    """Independent streams per purpose, so that e.g. train_subset never changes which images are val."""
    value = int(hashlib.sha1(f"{seed}:{purpose}".encode()).hexdigest()[:15], 16)
    gen = torch.Generator()
    gen.manual_seed(value)
    return gen


def _quotas(n: int, counts: list[int]) -> list[int]:
    """Split ``n`` across classes in proportion to ``counts`` (largest remainder, ties to lower class)."""
    total = sum(counts)
    n = min(n, total)
    exact = [n * c / total if total else 0.0 for c in counts]
    quota = [min(int(e), c) for e, c in zip(exact, counts)]
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    i = 0
    while sum(quota) < n:
        k = order[i % len(order)]
        if quota[k] < counts[k]:
            quota[k] += 1
        i += 1
    return quota


def balanced_pick(labels: torch.Tensor, n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Sorted positions of ``n`` items of ``labels``, class-balanced, chosen at random by ``gen``."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    picks = []
    for cls, quota in enumerate(_quotas(n, counts)):
        members = (labels == cls).nonzero().squeeze(1)
        picks.append(members[torch.randperm(len(members), generator=gen)[:quota]])
    return torch.cat(picks).sort().values if picks else torch.empty(0, dtype=torch.int64)


def split_indices(labels: torch.Tensor, num_classes: int, val_fraction: float, seed: int,
                  train_subset: int = 0, val_subset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, held out) positions into the source's train part: train and val disjoint,
    class-balanced, seeded; held out = val before ``val_subset`` thins it (all that train lacks
    but ``train_subset``'s thinning)."""
    n_val = round(val_fraction * len(labels))
    if n_val < num_classes:  # every validation score would rest on less than one image per class
        raise RunError(f"data.val_fraction={val_fraction:g} holds out {n_val} of {len(labels)} training images, fewer "
                       f"than one per class ({num_classes}); raise it (default 0.1)")
    held_out = balanced_pick(labels, n_val, num_classes, derived_generator(seed, "val"))
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    train, val = keep.nonzero().squeeze(1), held_out
    if train_subset and train_subset < len(train):
        train = train[balanced_pick(labels[train], train_subset, num_classes, derived_generator(seed, "train_subset"))]
    if val_subset and val_subset < len(val):
        val = val[balanced_pick(labels[val], val_subset, num_classes, derived_generator(seed, "val_subset"))]
    return train, val, held_out


def check_space(cfg: Config, data: Dataset | Splits) -> None:
    """The model's input and output sizes must match the data, or training fails far from the cause."""
    channels, size = int(data.train_x.shape[1]), tuple(data.train_x.shape[2:])
    if channels != cfg.space.in_channels:
        raise RunError(f"{cfg.data.name} images have {channels} channel(s) but space.in_channels="
                       f"{cfg.space.in_channels}; set space.in_channels={channels}")
    if len(data.classes) != cfg.space.num_classes:
        raise RunError(f"{cfg.data.name} has {len(data.classes)} classes but space.num_classes="
                       f"{cfg.space.num_classes}; set space.num_classes={len(data.classes)}")
    if size != (cfg.space.input_size, cfg.space.input_size):
        raise RunError(f"{cfg.data.name} images are {size[0]}x{size[1]} but space.input_size="
                       f"{cfg.space.input_size}; set space.input_size={size[0]}")


def load_splits(cfg: Config, check: bool = True) -> Splits:
    """Train / val / test tensors for ``cfg``; val is a seeded class-balanced share of the train part."""
    data = load_dataset(cfg)
    if check:
        check_space(cfg, data)
    train, val, held_out = split_indices(data.train_y, len(data.classes), cfg.data.val_fraction, cfg.seed,
                                         cfg.data.train_subset, cfg.data.val_subset)
    return Splits(
        train_x=data.train_x[train], train_y=data.train_y[train],
        val_x=data.train_x[val], val_y=data.train_y[val],
        test_x=data.test_x.clone(), test_y=data.test_y.clone(),  # clone: no tensor outlives the mmap
        classes=list(data.classes), mean=data.mean, std=data.std, cache_path=data.cache_path,
        train_index=train, val_index=val,
        held_out_digest=tensor_digest(data.train_x[held_out], data.train_y[held_out]),
    )


# ----------------------------------------------------------------------------- loader
class TensorLoader:
    """Batches ``(x, y)`` already on ``device``: x float32 normalised NCHW, y int64.

    Training mode shuffles with its own seeded generator and augments whole batches at once
    (random crop from a zero-padded copy, horizontal flip, cutout). All randomness comes from
    one CPU generator, so ``state_dict()`` (generator, epoch, position, permutation) resumes
    a run exactly on any device. Each ``iter()`` starts a new epoch, except the first one after
    ``load_state_dict`` of a mid-epoch state, which finishes that epoch.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu", train: bool = False, seed: int = 0,
                 crop_padding: int = 0, hflip: bool = False, cutout: int = 0,
                 drop_last: bool | None = None) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x must be uint8 NCHW, got {x.dtype} of shape {tuple(x.shape)}")
        if len(x) != len(y) or len(mean) != x.shape[1] or len(std) != x.shape[1]:
            raise ValueError("x, y, mean and std disagree on the number of samples or channels")
        self.device = torch.device(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.crop_padding = crop_padding if train else 0
        self.hflip, self.cutout = hflip and train, cutout if train else 0
        self.drop_last = train if drop_last is None else drop_last
        self.num_samples = len(x)
        self.image_shape = tuple(x.shape[1:])
        p = self.crop_padding
        # Padding the whole split once lets every crop be a strided view into it.
        self._x = (F.pad(x, (p, p, p, p)) if p else x).to(self.device).contiguous()
        self._y = y.to(device=self.device, dtype=torch.int64)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale, self._bias = 1.0 / (255.0 * std_t), -mean_t / std_t
        self._gen = torch.Generator()
        self._gen.manual_seed(seed)
        self._epoch, self._pos = 0, 0
        self._perm: torch.Tensor | None = None
        self._resume = False

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        if self.drop_last:
            return full if full else int(rest > 0)  # a split smaller than a batch still yields one
        return full + int(rest > 0)

    @property
    def epoch(self) -> int:
        """Epochs started so far (1 during the first)."""
        return self._epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self._resume:
            self._start_epoch()
        self._resume = False
        while self._pos < len(self):
            index = self._batch_index(self._pos)
            self._pos += 1
            yield self._batch(index)

    def _start_epoch(self) -> None:
        self._epoch += 1
        self._pos = 0
        self._perm = torch.randperm(self.num_samples, generator=self._gen) if self.train else None

    def _batch_index(self, pos: int) -> torch.Tensor | slice:
        start, stop = pos * self.batch_size, min((pos + 1) * self.batch_size, self.num_samples)
        if self._perm is None:
            return slice(start, stop)
        return self._perm[start:stop].to(self.device, non_blocking=True)

    def _batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        y = self._y[index]
        if self.crop_padding:
            images = self._random_crops(index)
        else:
            images = self._x[index]
        if self.hflip:
            images = self._random_flips(images)
        out = images.float().mul_(self._scale).add_(self._bias)
        if self.cutout:
            out.mul_(self._cutout_mask(len(out)))
        return out, y

    def _draw(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self._gen).to(self.device, non_blocking=True)

    def _random_crops(self, index: torch.Tensor) -> torch.Tensor:
        c, h, w = self.image_shape
        xp = self._x
        positions = 2 * self.crop_padding + 1
        # View of every (image, dy, dx) crop; advanced indexing then copies just the chosen ones.
        windows = xp.as_strided((xp.shape[0], positions, positions, c, h, w),
                                (xp.stride(0), xp.stride(2), xp.stride(3), xp.stride(1), xp.stride(2), xp.stride(3)))
        n = len(index)
        return windows[index, self._draw(positions, n), self._draw(positions, n)]

    def _random_flips(self, images: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(images), generator=self._gen).to(self.device, non_blocking=True) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)

    def _cutout_mask(self, n: int) -> torch.Tensor:
        _, h, w = self.image_shape
        cy, cx = self._draw(h, n).view(-1, 1, 1), self._draw(w, n).view(-1, 1, 1)
        rows = torch.arange(h, device=self.device).view(1, -1, 1)
        cols = torch.arange(w, device=self.device).view(1, 1, -1)
        half = self.cutout // 2
        # Square of side `cutout` starting at (c - side//2), clipped at the borders (DeVries & Taylor).
        lo_y, lo_x = cy - half, cx - half
        inside = (rows >= lo_y) & (rows < lo_y + self.cutout) & (cols >= lo_x) & (cols < lo_x + self.cutout)
        return (~inside).unsqueeze(1).to(torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "pos": self._pos, "generator": self._gen.get_state(),
                "perm": None if self._perm is None else self._perm.clone(),
                "num_samples": self.num_samples, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["num_samples"], state["batch_size"]) != (self.num_samples, self.batch_size):
            raise RunError(f"loader state is for {state['num_samples']} samples in batches of {state['batch_size']}, "
                           f"but this loader has {self.num_samples} in batches of {self.batch_size}; "
                           "resume with the same data and batch-size settings")
        self._gen.set_state(state["generator"])
        self._epoch, self._pos = int(state["epoch"]), int(state["pos"])
        self._perm = None if state["perm"] is None else state["perm"].clone()
        self._resume = self._epoch > 0 and self._pos < len(self)


def make_loader(cfg: Config, x: torch.Tensor, y: torch.Tensor, device: torch.device | str, train: bool,
                seed: int, *, mean: Sequence[float], std: Sequence[float]) -> TensorLoader:
    """A loader with the config's batch size and augmentation, normalising by ``mean`` / ``std`` (the
    splits' own, or an export's)."""
    device = torch.device(device)
    aug = cfg.data.augment
    return TensorLoader(x, y, cfg.data.batch_size if train else cfg.data.eval_batch_size, mean=mean, std=std,
                        device=device, train=train, seed=seed, crop_padding=aug.crop_padding, hflip=aug.hflip,
                        cutout=aug.cutout)


def calibration_batches(cfg: Config, x: torch.Tensor, y: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                        device: torch.device | str, num_batches: int) -> list[torch.Tensor]:
    """Fixed un-augmented training batches for BN recalibration: the same images for every epoch, subnet
    and command of a run (seeded by the run's seed), at the training batch size because BN statistics
    depend on the batch size."""
    n = min(len(x), num_batches * cfg.data.batch_size)
    pick = torch.randperm(len(x), generator=derived_generator(cfg.seed, "bn-calib"))[:n]
    loader = TensorLoader(x[pick], y[pick], cfg.data.batch_size, mean=mean, std=std, device=device)
    return [xb for xb, _ in loader]


# ----------------------------------------------------------------------------- command
def _count_table(splits: Splits) -> list[str]:
    counts = {name: torch.bincount(getattr(splits, f"{name}_y"), minlength=splits.num_classes).tolist()
              for name in ("train", "val", "test")}
    if splits.num_classes > 20:
        return [f"  {name:<5} per class: min {min(c):,}  max {max(c):,}" for name, c in counts.items()]
    width = max(len(c) for c in splits.classes)
    lines = [f"  {'class':<{width}} {'train':>7} {'val':>7} {'test':>7}"]
    for i, cls in enumerate(splits.classes):
        lines.append(f"  {cls:<{width}} {counts['train'][i]:>7,} {counts['val'][i]:>7,} {counts['test'][i]:>7,}")
    return lines


def prepare_command(cfg: Config, args: Any) -> int:
    """``nachos data``: build (or reuse) the tensor cache and print what the splits hold."""
    start = time.perf_counter()
    splits = load_splits(cfg, check=False)
    seconds = time.perf_counter() - start
    c, h, w = splits.train_x.shape[1:]
    print(f"dataset   {cfg.data.name}: {splits.num_classes} classes, {c}x{h}x{w} uint8 images")
    for name in ("train", "val", "test"):
        print(f"{name:<9} {len(getattr(splits, f'{name}_y')):>7,} images")
    print(f"classes   {', '.join(splits.classes)}")
    print("per-class counts:")
    print("\n".join(_count_table(splits)))
    print(f"mean      {', '.join(f'{m:.4f}' for m in splits.mean)}")
    print(f"std       {', '.join(f'{s:.4f}' for s in splits.std)}")
    print(f"cache     {splits.cache_path}")
    print(f"load time {seconds:.2f} s")
    try:
        check_space(cfg, splits)
    except RunError as err:
        print(f"warning: {err}", file=sys.stderr)
    return 0
