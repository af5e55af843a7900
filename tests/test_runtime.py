"""Run plumbing: atomic writes, clear errors for unwritable folders, seeding, W&B offline runs."""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nachos.config import load_config
from nachos.runtime import (RunError, atomic_torch_save, atomic_write_text, ensure_dir, json_digest, memory_format,
                            replace_dir, resolve_device, rng_state, seed_everything, set_rng_state)
from nachos.tracking import Tracker, read_offline_history

REPO = Path(__file__).resolve().parents[1]


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]
    # the mode open() gives (not mkstemp's owner-only 0600): a shared cache stays readable
    old = os.umask(0o022)
    try:
        atomic_write_text(path, "three")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_failed_save_keeps_previous_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_a_checkpoint_of_other_settings_is_refused_not_trained_over(tmp_path):
    """Fine-tunes and baselines name their files by some settings only (not the learning rate, say):
    training on with others would overwrite that work epoch by epoch."""
    from nachos.runtime import resume_training

    path = tmp_path / "run.pt"
    assert resume_training(path, "fp-a", {}) is None  # nothing to resume
    model = torch.nn.Linear(2, 2)
    atomic_torch_save({"fingerprint": "fp-a", "model": model.state_dict(), "rng": rng_state()}, path)
    with pytest.raises(RunError, match=r"run\.pt was written with other settings.*move or remove it"):
        resume_training(path, "fp-b", {"model": torch.nn.Linear(2, 2)})
    assert torch.load(path, weights_only=False)["fingerprint"] == "fp-a"
    other = torch.nn.Linear(2, 2)
    assert resume_training(path, "fp-a", {"model": other})["fingerprint"] == "fp-a"
    assert torch.equal(other.weight, model.weight)
    path.write_bytes(b"truncated")  # unreadable: only a cache, so noted and started over
    assert resume_training(path, "fp-a", {}) is None


@pytest.mark.parametrize("err, pattern", [(errno.EROFS, "read-only"), (errno.EACCES, "read-only"),
                                          (errno.ENOSPC, "disk is full")])
def test_os_errors_become_clear_run_errors(tmp_path, monkeypatch, err, pattern):
    # Root ignores permissions, so the disk's refusal is simulated at the syscall boundary.
    def refuse(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(RunError, match=pattern):
        ensure_dir(tmp_path / "x")


def _probe_many(folder: str) -> None:
    for _ in range(300):
        ensure_dir(folder)


def test_jobs_writing_into_one_folder_do_not_trip_each_others_probe(tmp_path):
    # two static baselines side by side write checkpoints into one baselines/ folder
    ctx = multiprocessing.get_context("fork")
    jobs = [ctx.Process(target=_probe_many, args=(str(tmp_path),)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    assert list(tmp_path.iterdir()) == []


def test_unwritable_path_gives_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunError, match="cannot write to"):
        ensure_dir(blocker / "sub")  # a file stands where the folder should be


def test_json_digest_ignores_key_order_and_keeps_the_ids_runs_stored():
    a = {"b": [1, 2.5], "a": {"y": None, "x": Path("runs/x")}}
    b = {"a": {"x": Path("runs/x"), "y": None}, "b": [1, 2.5]}
    assert json_digest(a) == json_digest(b) and len(json_digest(a)) == 16 and len(json_digest(a, 20)) == 20
    assert json_digest(a) != json_digest({**a, "b": [1, 2.6]})
    # the forms that supernet checkpoints, MAC tables, caches and exports were stamped with before the helper
    spaced = json.dumps(a, sort_keys=True, default=str)
    compact = json.dumps(a, sort_keys=True, separators=(",", ":"), default=str)
    assert json_digest(a, 20) == hashlib.sha256(spaced.encode()).hexdigest()[:20]
    assert json_digest(a, compact=True) == hashlib.sha256(compact.encode()).hexdigest()[:16] != json_digest(a)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RunError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(RunError, match="runs on cpu or cuda"):
        resolve_device("meta")


def test_a_gpu_index_beyond_the_machine_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(RunError, match="has 2 CUDA GPU"):
        resolve_device("cuda:2")


def test_channels_last_applies_on_cpu_only():
    # on a GPU cuDNN builds NHWC kernels per new layer shape, which an elastic supernet meets every step
    assert memory_format(True, "cpu") == torch.channels_last
    assert memory_format(True, torch.device("cuda", 0)) == torch.contiguous_format
    assert memory_format(False, "cpu") == torch.contiguous_format


def test_seeding_leaves_cudnn_autotuning_off():
    torch.backends.cudnn.benchmark = True
    seed_everything(0)
    assert torch.backends.cudnn.benchmark is False  # new shapes every step: autotuning cannot pay


def test_rng_state_round_trip_replays_every_stream():
    seed_everything(3)
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_offline_wandb_run_holds_logged_metrics(tmp_path):
    cfg = load_config(REPO / "configs" / "cifar10.yaml", ["wandb.mode=offline"], device_type="cpu")
    tracker = Tracker(cfg, tmp_path, "test")
    for step in range(3):
        tracker.log({"train/loss": 1.0 / (step + 1), "val/largest/exit_0": 0.25 * step}, step=step)
    path = tracker.run_path
    tracker.finish()
    rows = read_offline_history(path, wait_s=30)
    assert [r["train/loss"] for r in rows] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [r["val/largest/exit_0"] for r in rows] == pytest.approx([0.0, 0.25, 0.5])


def test_a_job_started_again_gets_a_new_wandb_run_and_a_resumed_one_its_own(tmp_path):
    from nachos.tracking import wandb_run_id

    first = wandb_run_id(tmp_path, "supernet", resume=False)
    assert wandb_run_id(tmp_path, "supernet", resume=True) == first
    again = wandb_run_id(tmp_path, "supernet", resume=False)
    assert again != first and wandb_run_id(tmp_path, "supernet", resume=True) == again
    assert wandb_run_id(tmp_path, "search", resume=True) != again  # one run per job


def test_disabled_tracker_writes_nothing(tmp_path):
    cfg = load_config(REPO / "configs" / "cifar10.yaml", ["wandb.mode=disabled"], device_type="cpu")
    tracker = Tracker(cfg, tmp_path / "run", "test")
    tracker.log({"x": 1})
    tracker.finish()
    assert not tracker.enabled and not (tmp_path / "run").exists()


def _history_record(value: float, pad: int = 0) -> bytes:
    from wandb.proto import wandb_internal_pb2

    rec = wandb_internal_pb2.Record()
    item = rec.history.item.add()
    item.key, item.value_json = "train/loss", str(value)
    if pad:  # a long logged string makes the record as large as a test needs
        filler = rec.history.item.add()
        filler.key, filler.value_json = "pad", '"' + "x" * pad + '"'
    return rec.SerializeToString()


def _leveldb_log(payloads: list[bytes]) -> tuple[bytes, list[int]]:
    """A .wandb file as wandb-core writes it, and where each record ends: a 7-byte header, then 32 KiB
    blocks of chunks (crc, unchecked here; length; type 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST; payload). A
    record too long for its block goes on in the next; a block's tail too short for a chunk header is
    zero padding."""
    block, out, ends = 32768, bytearray(b":W&B\x00\x00\x00"), []
    for payload in payloads:
        rest, first = payload, True
        while True:
            room = block - len(out) % block
            if room < 7:
                out += bytes(room)
                continue
            n = min(len(rest), room - 7)
            last = n == len(rest)
            kind = (1 if last else 2) if first else (4 if last else 3)
            out += b"\xa5\x5a\xc3\x3c" + n.to_bytes(2, "little") + bytes([kind]) + rest[:n]
            rest, first = rest[n:], False
            if last:
                break
        ends.append(len(out))
    return bytes(out), ends


def test_offline_history_reader_skips_a_record_still_being_written(tmp_path):
    # wandb-core appends from its own process: a reader racing it sees the file cut anywhere.
    block, values = 32768, (1.0, 0.5, 0.25, 0.125)
    first = _history_record(values[0])
    # the second record ends 3 bytes before the first block does, so the next record starts after padding
    room = block - 3 - (7 + 7 + len(first)) - 7
    second = next(r for r in map(lambda pad: _history_record(values[1], pad), range(room - 60, room))
                  if len(r) == room)
    # the third spans three blocks: FIRST, MIDDLE and LAST chunks
    payloads = [first, second, _history_record(values[2], pad=2 * block + 1000), _history_record(values[3])]
    data, ends = _leveldb_log(payloads)
    assert ends[1] == block - 3 and ends[2] > 3 * block
    run = tmp_path / "offline-run"
    run.mkdir()
    near = {e + d for e in ends + [k * block for k in range(1, 4)] for d in range(-8, 9)}
    for cut in sorted({c for c in near | set(range(7, len(data), 997)) if 7 <= c <= len(data)} | {len(data)}):
        (run / "run-x.wandb").write_bytes(data[:cut])
        rows = read_offline_history(run)
        whole = sum(end <= cut for end in ends)
        assert [r["train/loss"] for r in rows] == list(values[:whole]), cut


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "a.txt").write_text(text)
    (path / "sub").mkdir()
    (path / "sub" / "b.txt").write_text(text)
    return path


def test_replace_dir_swaps_a_folder_in_and_a_kill_mid_swap_keeps_a_complete_copy(tmp_path, monkeypatch):
    dest = _folder(tmp_path / "dest", "old")
    replace_dir(_folder(tmp_path / ".staging-1", "new"), dest)
    assert (dest / "sub" / "b.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]  # nothing left beside it
    # killed between moving the old folder aside and swapping the new one in
    staging = _folder(tmp_path / ".staging-2", "newer")
    real = os.replace
    calls = []

    def dies_on_the_swap(src, dst):
        calls.append(src)
        if Path(src) == staging:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", dies_on_the_swap)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(staging, dest)
    assert len(calls) == 3  # aside, the swap that dies, back
    assert (dest / "a.txt").read_text() == "new" and (dest / "sub" / "b.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging-2", "dest"]
    assert (staging / "a.txt").read_text() == "newer"
