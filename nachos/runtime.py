"""Device choice, seeding, run folders and atomic file writes shared by every stage."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class RunError(RuntimeError):
    """A problem the user can fix (missing file, unwritable folder...); printed without a traceback."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"device={name!r}: nachos runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device={name!r} asked for, but no CUDA GPU is visible; use device=auto or device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RunError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                       "use cuda:0 up to one below that, or device=auto")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it times that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_format(channels_last: bool, device: torch.device | str) -> torch.memory_format:
    """The memory format networks train and validate in: channels_last where ``train.channels_last``
    asks for it and the device is not a GPU. On CPU it pays: oneDNN's depthwise and 1x1 convolutions
    run a training step of the hand network ~1.6x faster in it (``bench/memory_format.py``). On a GPU
    it does not: cuDNN builds NHWC kernels for each new layer shape, and an elastic supernet meets new
    shapes at nearly every step. H200 (torch 2.11, cu130), full CIFAR-10 space, batch 512: sandwich
    steps took 3-8 s at first and ~0.4 s after 40 steps in channels_last, 0.10-0.12 s contiguous (bf16
    or fp32)."""
    return torch.channels_last if channels_last and torch.device(device).type != "cuda" else torch.contiguous_format


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    # cuDNN autotuning stays off: it pays only for shapes met again, and the supernet and the search
    # meet a new layer shape at nearly every step (each sampled subnet slices other widths and kernels).
    torch.backends.cudnn.benchmark = False


def json_digest(obj: Any, length: int = 16, compact: bool = False) -> str:
    """Stable hex id of a JSON-able object (keys sorted, anything else as its str). ``compact`` drops
    the separators' spaces: the two forms give different ids, and an id already stored in run folders,
    caches and exports must keep its form."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":") if compact else None, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def ensure_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) with a clear error when the disk says no."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a probe of a unique name: jobs writing into one folder (two baselines side by side) must
        # not delete each other's probe
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise RunError(_os_error_text(path, err)) from None
    return path


def _os_error_text(path: Path, err: OSError) -> str:
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return (f"cannot write to {path}: the folder is read-only; choose another with out_dir=... "
                "or fix its permissions")
    if err.errno == errno.ENOSPC:
        return f"cannot write to {path}: the disk is full; free space or choose another out_dir=..."
    return f"cannot write to {path}: {err.strerror}"


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _atomic_write(path: str | Path, write: Any) -> Path:
    """Write through a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file owner-only (0600); give it the mode open() would, so that a shared
        # data cache or run folder stays readable by whoever could read the rest
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise RunError(_os_error_text(path, err)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic_write(path, lambda fh: fh.write(text.encode()))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return _atomic_write(path, lambda fh: torch.save(obj, fh))


def replace_dir(staging: str | Path, dest: str | Path) -> Path:
    """Swap the finished folder ``staging`` in as ``dest``. The old ``dest`` is moved aside (beside
    ``staging``, where readers of ``dest``'s folder do not look) before the swap and deleted after it,
    so a kill at any point leaves a complete copy instead of neither (an interrupted swap puts the old
    one back)."""
    staging, dest = Path(staging), Path(dest)
    old = staging.with_name(staging.name + ".old")
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    try:
        os.replace(staging, dest)
    except BaseException:  # Ctrl-C or a failed rename: the old copy goes back where its readers look
        if old.exists() and not dest.exists():
            os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return dest


def rng_state() -> dict:
    """Every RNG stream a run draws from, so that a resumed run continues them exactly."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_training(path: Path, fingerprint: str, stateful: dict[str, Any]) -> dict | None:
    """Restore a per-epoch training checkpoint written for the same settings (``fingerprint``).

    ``stateful`` maps checkpoint keys to objects with ``load_state_dict`` (model, optimizer,
    loader...); the RNG streams are restored too. Returns the checkpoint, or None when there is
    none or it is unreadable (a note: it is only a cache); a RunError when it was written for other
    settings, whose work training on would overwrite (the file names do not hold every setting)."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated file raises many kinds of errors
        print(f"note: ignoring unreadable checkpoint {path} ({type(err).__name__})", file=sys.stderr)
        return None
    if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != fingerprint:
        raise RunError(f"{path} was written with other settings; pass the settings it was trained with to keep or "
                       f"resume it, or move or remove it to train again with these")
    for key, obj in stateful.items():
        obj.load_state_dict(ckpt[key])
    set_rng_state(ckpt["rng"])
    return ckpt
