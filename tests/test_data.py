"""Data: sources decode to the right sizes, the cache is reused or rebuilt, splits are disjoint and
seeded, and the on-device loader augments whole batches and resumes exactly."""
from __future__ import annotations

import dataclasses
import io
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nachos.data as data
from nachos.config import Config, load_config
from nachos.data import (Splits, TensorLoader, load_dataset, load_splits, make_loader, prepare_command,
                         split_indices)
from nachos.runtime import RunError

REPO = Path(__file__).resolve().parents[1]
REPO_CACHE = REPO / "data" / "cache"  # shared across runs: the first CIFAR build takes ~15 s, later ones ~0.2 s
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def make_cfg(**overrides) -> Config:
    base = {"data.cache_dir": str(REPO_CACHE)}
    base.update(overrides)
    return load_config(None, base, device_type="cpu")


def mnist_cfg(**overrides) -> Config:
    return make_cfg(**{"data.name": "mnist", "space.in_channels": 1, "space.input_size": 28, **overrides})


@pytest.fixture(scope="module")
def cifar() -> data.Dataset:
    return load_dataset(make_cfg())


@pytest.fixture(scope="module")
def cifar_splits(cifar) -> Splits:
    return load_splits(make_cfg())


class DecodeCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = data.decode_source

        def counting(source, cfg):
            self.calls += 1
            return real(source, cfg)

        monkeypatch.setattr(data, "decode_source", counting)


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(source, cfg):
        raise AssertionError(f"decoded {source.path} although a valid cache exists")

    monkeypatch.setattr(data, "decode_source", fail)


# ----------------------------------------------------------------------------- CIFAR-10
def test_cifar10_tarball_has_official_sizes_and_classes(cifar):
    assert cifar.train_x.shape == (50_000, 3, 32, 32) and cifar.train_x.dtype == torch.uint8
    assert cifar.test_x.shape == (10_000, 3, 32, 32)
    assert cifar.train_y.dtype == torch.int64
    assert cifar.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(cifar.train_y).tolist() == [5000] * 10
    assert torch.bincount(cifar.test_y).tolist() == [1000] * 10
    # The dataset README publishes these means of the decoded images.
    assert cifar.mean == pytest.approx((0.4913, 0.4821, 0.4465), abs=2e-4)


def test_second_cifar_load_reuses_cache(cifar, monkeypatch):
    forbid_decoding(monkeypatch)  # (a wall-clock bound here would fail on a loaded CI machine)
    splits = load_splits(make_cfg())
    assert len(splits.train_y) + len(splits.val_y) == 50_000


def test_cifar_splits_disjoint_balanced_and_consistent(cifar, cifar_splits):
    s = cifar_splits
    assert len(s.train_y) == 45_000 and len(s.val_y) == 5_000 and len(s.test_y) == 10_000
    assert torch.bincount(s.val_y).tolist() == [500] * 10
    assert torch.bincount(s.train_y).tolist() == [4500] * 10
    together = torch.cat([s.train_index, s.val_index])
    assert len(torch.unique(together)) == 50_000  # disjoint and covering
    assert torch.equal(s.val_x, cifar.train_x[s.val_index]) and torch.equal(s.val_y, cifar.train_y[s.val_index])
    assert torch.equal(s.test_x, cifar.test_x)  # test is never mixed into train or val


def test_splits_are_deterministic_per_seed(cifar_splits):
    again = load_splits(make_cfg())
    other = load_splits(make_cfg(seed=1))
    assert torch.equal(again.val_index, cifar_splits.val_index)
    assert torch.equal(again.train_x, cifar_splits.train_x)
    assert not torch.equal(other.val_index, cifar_splits.val_index)


def test_subsets_are_class_balanced_and_keep_val_fixed(cifar_splits):
    s = load_splits(make_cfg(**{"data.train_subset": 1000, "data.val_subset": 200}))
    assert torch.bincount(s.train_y).tolist() == [100] * 10
    assert torch.bincount(s.val_y).tolist() == [20] * 10
    assert set(s.val_index.tolist()) <= set(cifar_splits.val_index.tolist())
    assert not set(s.train_index.tolist()) & set(cifar_splits.val_index.tolist())
    # what a search checks against its supernet: the held-out images, whichever subsets thin the sides
    assert s.held_out_digest == cifar_splits.held_out_digest
    assert load_splits(make_cfg(seed=1)).held_out_digest != cifar_splits.held_out_digest


def test_test_digest_names_the_images_not_their_order(cifar_splits):
    from eval.evaluate import test_order

    s = cifar_splits
    order = test_order(s.test_y, s.num_classes, 200, seed=0)
    assert s.test_digest(order) == s.test_digest(order.flip(0))  # an accuracy does not depend on the order
    # another seed's subset of the same size is other images; so is the whole split
    assert s.test_digest(test_order(s.test_y, s.num_classes, 200, seed=1)) != s.test_digest(order)
    assert s.test_digest(test_order(s.test_y, s.num_classes, 0, seed=0)) != s.test_digest(order)
    # and the same positions of other images (another data set) are told apart too
    moved = dataclasses.replace(s, test_x=s.test_x.roll(1, 0))
    assert moved.test_digest(order) != s.test_digest(order)


def test_split_indices_stratify_imbalanced_labels():
    labels = torch.tensor([0] * 80 + [1] * 20)
    train, val, _ = split_indices(labels, 2, 0.1, seed=3)
    assert torch.bincount(labels[val]).tolist() == [8, 2]
    assert len(train) == 90 and not set(train.tolist()) & set(val.tolist())
    # a share that rounds to less than one image per class is named, not turned into empty scores
    with pytest.raises(RunError, match=r"val_fraction=0.01 holds out 1 of 100 .* one per class \(2\); raise it"):
        split_indices(labels, 2, 0.01, seed=3)
    assert len(split_indices(labels, 2, 0.02, seed=3)[1]) == 2


# ----------------------------------------------------------------------------- MNIST and other formats
def test_mnist_idx_files():
    ds = load_dataset(mnist_cfg())
    assert ds.train_x.shape == (60_000, 1, 28, 28) and ds.test_x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(ds.test_y).tolist() == MNIST_TEST_COUNTS
    assert ds.mean[0] == pytest.approx(0.1307, abs=1e-4) and ds.std[0] == pytest.approx(0.3081, abs=1e-4)


def test_truncated_idx_header_is_named(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big"))  # cut inside the dimension sizes
    with pytest.raises(RunError, match=r"train-images-idx3-ubyte is truncated.*replace it"):
        data.read_idx(path)


def test_corrupt_or_truncated_cache_is_rebuilt(tmp_path, monkeypatch):
    cfg = mnist_cfg(**{"data.cache_dir": str(tmp_path / "cache")})
    counter = DecodeCounter(monkeypatch)
    first = load_dataset(cfg)
    path = first.cache_path
    assert counter.calls == 1 and path.is_file()
    good = path.read_bytes()
    path.write_bytes(b"garbage, not a torch file")
    assert torch.equal(load_dataset(cfg).train_x, first.train_x)
    assert counter.calls == 2
    path.write_bytes(good[: len(good) // 2])
    assert torch.equal(load_dataset(cfg).test_y, first.test_y)
    assert counter.calls == 3
    load_dataset(cfg)
    assert counter.calls == 3  # the rebuilt file is valid again


def write_image(path: Path, color: tuple[int, int, int], size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for i in range(4):
        write_image(root / "train" / "cat" / f"{i}.png", (255, 0, 0), size=40)  # resized to 32
        write_image(root / "train" / "dog" / f"{i}.png", (0, 0, 255))
    write_image(root / "test" / "cat" / "0.png", (255, 0, 0))
    write_image(root / "test" / "dog" / "0.png", (0, 0, 255))
    return root


def folder_cfg(root: Path, tmp_path: Path, channels: int = 3) -> Config:
    return make_cfg(**{"data.name": "imagefolder", "data.root": str(root), "data.cache_dir": str(tmp_path / "c"),
                       "data.val_fraction": 0.25, "space.in_channels": channels, "space.num_classes": 2})


def test_imagefolder_decodes_resizes_and_converts_channels(folder, tmp_path):
    s = load_splits(folder_cfg(folder, tmp_path))
    assert s.classes == ["cat", "dog"]
    assert s.train_x.shape == (6, 3, 32, 32) and s.val_x.shape == (2, 3, 32, 32) and s.test_x.shape == (2, 3, 32, 32)
    assert torch.bincount(s.val_y).tolist() == [1, 1]
    cat = s.test_x[s.test_y == 0][0]
    assert cat[0].float().mean() > 250 and cat[2].float().mean() < 5  # red stays red after the resize
    gray = load_splits(folder_cfg(folder, tmp_path, channels=1))
    assert gray.train_x.shape == (6, 1, 32, 32)


def test_changed_source_rebuilds_cache(folder, tmp_path, monkeypatch):
    counter = DecodeCounter(monkeypatch)
    cfg = folder_cfg(folder, tmp_path)
    assert len(load_dataset(cfg).train_y) == 8
    load_dataset(cfg)
    assert counter.calls == 1
    write_image(folder / "train" / "dog" / "new.png", (0, 0, 255))
    assert len(load_dataset(cfg).train_y) == 9
    assert counter.calls == 2


def test_imagefolder_class_lists_must_match(folder, tmp_path):
    write_image(folder / "test" / "bird" / "0.png", (0, 255, 0))
    with pytest.raises(RunError, match=r"same class folders; only in train/: none, only in test/: \['bird'\]"):
        load_dataset(folder_cfg(folder, tmp_path))
    for path in (folder / "test" / "bird").iterdir():
        path.unlink()
    (folder / "test" / "bird").rmdir()
    for path in (folder / "test" / "dog").iterdir():
        path.unlink()
    (folder / "test" / "dog").rmdir()
    with pytest.raises(RunError, match=r"only in train/: \['dog'\], only in test/: none"):
        load_dataset(folder_cfg(folder, tmp_path))


def test_imagefolder_without_class_subfolders_says_so(tmp_path):
    root = tmp_path / "flat"
    for split in ("train", "test"):
        write_image(root / split / "0.png", (255, 0, 0))
    with pytest.raises(RunError, match=r"train has no class subfolders; put each class's images in .*train/<class>/"):
        load_dataset(folder_cfg(root, tmp_path))


def test_unreadable_image_is_named(folder, tmp_path):
    (folder / "train" / "cat" / "broken.jpg").write_bytes(b"this is not a JPEG")
    with pytest.raises(RunError, match="broken.jpg"):
        load_dataset(folder_cfg(folder, tmp_path))


def write_cifar10_pickles(root: Path) -> dict[str, np.ndarray]:
    """torchvision's cifar-10-batches-py files, two random images (labels 1 and 7) in each batch."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        with open(root / name, "wb") as fh:
            pickle.dump({"data": rows[name], "labels": [1, 7]}, fh)
    return rows


def write_cifar_tarball(path: Path, colors: dict[str, tuple[int, int, int]], per_split: dict[str, int],
                        odd_size: str = "") -> None:
    """A tarball laid out as the shared cifar10-jpg.tar.gz: 'train/', 'train/<class>/', then
    'train/<class>/NNNN.jpg' (and test/ alike), one solid colour per class, members in shuffled order
    (the decoder must not rely on tar order). The member named ``odd_size`` is 40x40, the rest 32x32."""
    entries = []
    for split, count in per_split.items():
        entries.append((f"{split}/", None))
        for cls, color in colors.items():
            entries.append((f"{split}/{cls}/", None))
            for i in range(count):
                name = f"{split}/{cls}/{i:04d}.jpg"
                buf = io.BytesIO()
                Image.new("RGB", (40, 40) if name == odd_size else (32, 32), color).save(buf, "JPEG", quality=75)
                entries.append((name, buf.getvalue()))
    random.Random(0).shuffle(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            if blob is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


@pytest.fixture()
def fake_repo(tmp_path, monkeypatch) -> Path:
    """A repo at tmp_path/repo with empty data/ and ../shared/datasets/, so that no real copy is found."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    monkeypatch.setattr(data, "REPO", repo)
    monkeypatch.chdir(repo)
    return repo


COLORS = {"bird": (230, 20, 20), "cat": (20, 230, 20), "deer": (20, 20, 230), "frog": (230, 230, 20)}


def test_cifar10_tarball_images_carry_their_class_labels(fake_repo, tmp_path):
    write_cifar_tarball(tmp_path / "src" / data.CIFAR10_TARBALL, COLORS, {"train": 3, "test": 2})
    ds = load_dataset(make_cfg(**{"data.root": str(tmp_path / "src"), "data.cache_dir": str(tmp_path / "c")}))
    assert ds.cache_path.parent == tmp_path / "c"  # decoded here, not read from a shared cache
    assert ds.classes == sorted(COLORS)
    assert ds.train_x.shape == (12, 3, 32, 32) and ds.test_x.shape == (8, 3, 32, 32)
    assert torch.bincount(ds.train_y).tolist() == [3] * 4 and torch.bincount(ds.test_y).tolist() == [2] * 4
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        for image, label in zip(x, y):
            expected = torch.tensor(COLORS[ds.classes[label]], dtype=torch.float32)
            assert (image.float().mean(dim=(1, 2)) - expected).abs().max() < 8, (ds.classes[label], image[:, 0, 0])


def test_tarball_of_mixed_image_sizes_names_the_odd_image(fake_repo, tmp_path):
    write_cifar_tarball(tmp_path / data.CIFAR10_TARBALL, COLORS, {"train": 2, "test": 1}, odd_size="train/cat/0001.jpg")
    with pytest.raises(RunError, match=r"train/cat/0001\.jpg is 40x40 but .* is 32x32.*data\.name=imagefolder"):
        load_dataset(make_cfg(**{"data.root": str(tmp_path), "data.cache_dir": str(tmp_path / "c")}))


def test_cifar10_pickles_in_any_root_win_over_the_tarball(fake_repo, tmp_path, monkeypatch, capsys):
    tarball = tmp_path / "shared" / "datasets" / data.CIFAR10_TARBALL
    write_cifar_tarball(tarball, COLORS, {"train": 1, "test": 1})
    cfg = make_cfg(**{"data.cache_dir": str(tmp_path / "c")})
    # no pickles anywhere: the shared tarball, as every run so far read it
    assert data.find_source(cfg).path == tarball
    assert len(load_dataset(cfg).train_y) == 4
    assert f"cifar10 from {tarball} (JPEG tarball, lossy)" in capsys.readouterr().err
    # data.download=true fetches the lossless pickles instead of settling for the tarball
    pickles = fake_repo / "data" / "cifar-10-batches-py"
    monkeypatch.setattr(data, "_download", lambda c: write_cifar10_pickles(pickles))
    assert data.find_source(make_cfg(**{"data.download": True})).path == pickles
    # once there, the pickles in data/ win over the tarball of a root searched before data/
    monkeypatch.setattr(data, "_download", lambda c: pytest.fail("downloaded although pickles exist"))
    source = data.find_source(make_cfg(**{"data.download": True}))
    assert source.kind == "cifar10-pickle" and source.path == pickles
    assert len(load_dataset(cfg).train_y) == 10
    assert f"cifar10 from {pickles} (torchvision pickles, lossless)" in capsys.readouterr().err
    # a tarball named by data.root is the user's explicit choice
    assert data.find_source(make_cfg(**{"data.root": str(tarball)})).path == tarball


def test_cifar10_pickles_beside_their_cache_are_decoded_once(tmp_path, monkeypatch):
    write_cifar10_pickles(tmp_path)  # straight in data.root, which also holds the cache folder
    counter = DecodeCounter(monkeypatch)
    cfg = make_cfg(**{"data.root": str(tmp_path), "data.cache_dir": str(tmp_path / "cache")})
    for _ in range(3):
        assert len(load_dataset(cfg).train_y) == 10
    assert counter.calls == 1


def test_cifar10_pickle_folder_is_read(tmp_path):
    rows = write_cifar10_pickles(tmp_path / "cifar-10-batches-py")
    ds = load_dataset(make_cfg(**{"data.root": str(tmp_path), "data.cache_dir": str(tmp_path / "c")}))
    assert ds.classes == [f"c{i}" for i in range(10)]
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (2, 3, 32, 32)
    # Rows are R, G and B planes of 32x32 each.
    assert torch.equal(ds.train_x[0, 1], torch.from_numpy(rows["data_batch_1"][0, 1024:2048].reshape(32, 32)))
    assert ds.train_y.tolist() == [1, 7] * 5


def test_missing_dataset_names_every_place_looked(tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(RunError) as err:
        load_dataset(make_cfg(**{"data.name": "cifar100", "data.root": str(nowhere)}))
    text = str(err.value)
    assert str(nowhere) in text and "shared" in text and "data.root=" in text and "data.download=true" in text
    with pytest.raises(RunError, match=r"data\.root"):
        load_dataset(make_cfg(**{"data.name": "imagefolder"}))


def test_mismatched_space_is_reported():
    with pytest.raises(RunError, match=r"space\.in_channels=1"):
        load_splits(make_cfg(**{"data.name": "mnist"}))


def test_prepare_command_prints_splits(capsys):
    assert prepare_command(mnist_cfg(), None) == 0
    out = capsys.readouterr().out
    assert "54,000" in out and "6,000" in out and "10,000" in out
    assert "cache" in out and "mnist-" in out and "load time" in out


# ----------------------------------------------------------------------------- loader
N, C, H, W = 40, 3, 8, 8
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture()
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=gen)


def loader(x: torch.Tensor, **kw) -> TensorLoader:
    # Labels hold each image's position, so a test can find the original of any augmented sample.
    return TensorLoader(x, torch.arange(len(x)), kw.pop("batch_size", 16), mean=MEAN, std=STD, **kw)


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    std = torch.tensor(STD).view(1, -1, 1, 1)
    mean = torch.tensor(MEAN).view(1, -1, 1, 1)
    return ((batch * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def test_eval_mode_is_ordered_unaugmented_and_keeps_last_batch(images):
    ld = loader(images, crop_padding=4, hflip=True, cutout=4)
    batches = list(ld)
    assert len(ld) == len(batches) == 3 and len(batches[-1][0]) == N - 32
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (N, C, H, W)
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(N))
    assert torch.equal(to_uint8(x), images)
    assert abs(x.mean().item() - (images.float().mean().item() / 255 - 0.5) / 0.25) < 1e-4


def test_train_mode_shuffles_drops_last_and_flips(images):
    ld = loader(images, train=True, hflip=True)
    batches = list(ld)
    assert len(ld) == len(batches) == 2 and all(len(b[1]) == 16 for b in batches)
    assert batches[0][1].dtype == torch.int64
    y = torch.cat([b[1] for b in batches])
    assert not torch.equal(y, torch.arange(32)) and len(torch.unique(y)) == 32
    flipped = 0
    for img, idx in zip(to_uint8(torch.cat([b[0] for b in batches])), y):
        same, mirrored = torch.equal(img, images[idx]), torch.equal(img, images[idx].flip(2))
        assert same or mirrored
        flipped += mirrored and not same
    assert 4 <= flipped <= 28


def test_random_crop_is_a_zero_padded_shift(images):
    pad = 2
    ld = loader(images, train=True, crop_padding=pad)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    shifts = set()
    for x, y in ld:
        for img, idx in zip(to_uint8(x), y):
            matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                       if torch.equal(img, padded[idx, :, dy:dy + H, dx:dx + W])]
            assert matches, "a crop must be a window of the zero-padded image"
            shifts.add(matches[0])
    assert len(shifts) > 5  # offsets vary per sample, not per batch


def test_cutout_blanks_one_square_to_the_mean(images):
    x, y = next(iter(loader(images, train=True, cutout=4)))
    blank = x == 0  # normalised mean; the images never hold exactly 127.5
    per_sample = blank.all(dim=1).flatten(1).sum(1)
    assert ((per_sample >= 4) & (per_sample <= 16)).all()
    assert torch.equal(to_uint8(x)[~blank], images[y][~blank])


def test_cutout_centres_vary_on_both_axes_independently():
    many = torch.randint(0, 256, (256, C, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x, _ = next(iter(loader(many, batch_size=256, train=True, cutout=4)))
    blank = (x == 0).all(dim=1)
    corners = [(int(b.any(1).nonzero()[0]), int(b.any(0).nonzero()[0])) for b in blank]
    rows, cols = {r for r, _ in corners}, {c for _, c in corners}
    assert len(rows) > 2 and len(cols) > 2
    # one axis drawn from the other (a diagonal, say) would give no more pairs than values of an axis
    assert len(set(corners)) > 2 * max(len(rows), len(cols))


def test_same_seed_same_batches_other_seed_differs(images):
    first = next(iter(loader(images, train=True, seed=5, crop_padding=2, hflip=True)))
    again = next(iter(loader(images, train=True, seed=5, crop_padding=2, hflip=True)))
    other = next(iter(loader(images, train=True, seed=6, crop_padding=2, hflip=True)))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


@pytest.mark.parametrize("consumed", [1, 2, 3])  # 2 = exactly at an epoch boundary
def test_resume_from_state_dict_gives_identical_batches(images, consumed):
    kw = dict(train=True, crop_padding=2, hflip=True, cutout=3)
    a = loader(images, seed=1, **kw)
    stream = (batch for _ in range(5) for batch in a)
    for _ in range(consumed):
        next(stream)
    state = a.state_dict()
    expected = [next(stream) for _ in range(3)]
    b = loader(images, seed=99, **kw)
    b.load_state_dict(state)
    got = [batch for _ in range(3) for batch in b][:3]
    for (xa, ya), (xb, yb) in zip(expected, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_state_for_other_data_is_refused(images):
    state = loader(images, train=True).state_dict()
    with pytest.raises(RunError, match="samples"):
        loader(images[:20], train=True).load_state_dict(state)


def test_make_loader_uses_config_batch_sizes_and_normalises(images):
    cfg = make_cfg(**{"data.batch_size": 8, "data.eval_batch_size": 32})
    train = make_loader(cfg, images, torch.arange(N), "cpu", train=True, seed=0, mean=MEAN, std=STD)
    evl = make_loader(cfg, images, torch.arange(N), "cpu", train=False, seed=0, mean=MEAN, std=STD)
    assert len(train) == 5 and len(evl) == 2
    assert train.crop_padding == 4 and train.hflip and evl.crop_padding == 0 and not evl.hflip
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)
    assert torch.allclose(torch.cat([x for x, _ in evl]), expected, atol=1e-5)
