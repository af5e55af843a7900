"""Sandwich training end to end on a tiny space: learning, exact resume, refusals, NaN stop, DDP, W&B."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import supernet.train as train
from nachos.config import Config, load_config
from nachos.data import load_splits
from nachos.runtime import RunError
from nachos.tracking import read_offline_history
from supernet.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
STEPS_PER_EPOCH = 10  # 1,000 images in batches of 100


def tiny_cfg(out: Path, name: str = "run", **overrides: object) -> Config:
    base: dict[str, object] = {
        "out_dir": str(out), "name": name, "device": "cpu", "deterministic": True, "num_threads": 1,
        "data.cache_dir": str(REPO / "data" / "cache"), "data.train_subset": 1000, "data.val_subset": 200,
        "data.batch_size": 100, "data.eval_batch_size": 200, "train.epochs": 2, "train.lr": 0.1,
        "train.warmup_epochs": 0.2, "train.log_every": 1, "wandb.mode": "disabled",
    }
    base.update(overrides)
    return load_config(TINY, base, device_type="cpu")


def signal_at(when: int, sig: signal.Signals):
    """``train.sandwich`` that sends ``sig`` to this process when drawing step ``when``."""
    real = train.sandwich

    def sandwich(space, n_random, seed, step, **kw):
        if step == when:
            os.kill(os.getpid(), sig)
        return real(space, n_random, seed, step, **kw)
    return sandwich


def model_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict]:
    """Two epochs in one go, logged to an offline W&B run: the reference the other tests compare with."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("runs"), "straight", **{"wandb.mode": "offline"})
    return cfg, train.train_supernet(cfg)


def test_two_epochs_learn_and_log_to_wandb(straight: tuple[Config, dict]) -> None:
    cfg, result = straight
    assert result["exit_code"] == 0 and result["step"] == 2 * STEPS_PER_EPOCH
    run_dir = cfg.run_dir
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.json"):
        assert (run_dir / name).is_file(), name
    ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 20
    assert ckpt["space_hash"] == SearchSpace(cfg.space).space_hash()
    assert {"model", "optimizer", "scheduler", "loader", "rng", "config"} <= set(ckpt)
    assert ckpt["held_out_digest"] == load_splits(cfg).held_out_digest  # what the search checks it against
    # the cost report reads the training wall time and device from here
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["device"] == "cpu" and 0 < metrics["seconds"] <= ckpt["seconds"] + 5

    [offline] = list((run_dir / "wandb").glob("offline-run-*"))
    rows = read_offline_history(offline, wait_s=30)
    steps = [r for r in rows if "train/loss" in r]
    epochs = [r for r in rows if "val/largest/final" in r]
    assert len(steps) == 20 and len(epochs) == 2
    for key in ("train/loss/largest", "train/loss/smallest", "train/loss/random_0", "train/exit_0/loss",
                "train/lr", "perf/images_per_s"):
        assert key in steps[-1], key
    for member in ("largest", "smallest", "random"):
        for key in ("exit_0", "exit_1", "final"):
            assert 0.0 <= epochs[-1][f"val/{member}/{key}"] <= 1.0
    assert [r["epoch"] for r in epochs] == [1, 2]
    losses = [r["train/loss/largest"] for r in steps]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    assert max(r["train/lr"] for r in steps) == pytest.approx(0.1, rel=0.05)  # warm-up reached the peak
    assert steps[-1]["train/lr"] < 0.02  # and the cosine brought it down


# Resume tests train with dropout: without it nothing in a step draws from the global RNG, and a resume that
# forgot to restore it would still match the straight run.
DROPOUT = {"space.dropout": 0.3, "data.train_subset": 500, "data.val_subset": 100, "train.bn_calib_batches": 1}
DROPOUT_STEPS = 5  # per epoch


@pytest.fixture(scope="module")
def straight_dropout(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cfg = tiny_cfg(tmp_path_factory.mktemp("runs"), "straight-dropout", **DROPOUT)
    assert train.train_supernet(cfg)["step"] == 2 * DROPOUT_STEPS
    return cfg


def test_interrupt_and_resume_is_exact(straight_dropout: Config, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM mid-epoch 1 -> checkpoint, exit 143 -> --resume -> the same weights as the straight run."""
    cfg = straight_dropout
    cfg2 = tiny_cfg(tmp_path, "resumed", **DROPOUT)
    real = train.sandwich
    # lands mid-step; the step finishes, then the run saves
    monkeypatch.setattr(train, "sandwich", signal_at(2, signal.SIGTERM))
    assert train.supernet_command(cfg2, argparse.Namespace(resume=False)) == 143
    ckpt = torch.load(cfg2.run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert (ckpt["step"], ckpt["epoch"], ckpt["loader"]["pos"]) == (3, 0, 3)
    monkeypatch.setattr(train, "sandwich", real)
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers were put back

    result = train.train_supernet(cfg2, resume=True)
    assert result["exit_code"] == 0 and result["step"] == 2 * DROPOUT_STEPS
    ours, ref = model_state(cfg2.run_dir), model_state(cfg.run_dir)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_a_run_stopped_on_its_last_step_resumes_to_its_validation_metrics(
        straight_dropout: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped on the very last step, the run saves a finished checkpoint before metrics.json exists:
    the resume has no epoch left to validate, so the metrics must come from the checkpoint."""
    cfg2 = tiny_cfg(tmp_path, "last-step", **DROPOUT)
    real = train.sandwich
    monkeypatch.setattr(train, "sandwich", signal_at(2 * DROPOUT_STEPS - 1, signal.SIGTERM))
    assert train.supernet_command(cfg2, argparse.Namespace(resume=False)) == 143
    monkeypatch.setattr(train, "sandwich", real)
    assert torch.load(cfg2.run_dir / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 2
    assert not (cfg2.run_dir / "metrics.json").exists()
    result = train.train_supernet(cfg2, resume=True)
    stored = json.loads((cfg2.run_dir / "metrics.json").read_text())
    ref = json.loads((straight_dropout.run_dir / "metrics.json").read_text())
    val = [k for k in ref if k.startswith("val/")]
    assert val and all(stored[k] == ref[k] == result[k] for k in val)


def test_resume_at_epoch_boundary_is_exact(straight_dropout: Config, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One epoch, stop, resume for the second: identical to two epochs straight."""
    cfg = straight_dropout
    cfg2 = tiny_cfg(tmp_path, "boundary", **DROPOUT)
    real = train.sandwich
    monkeypatch.setattr(train, "sandwich", signal_at(DROPOUT_STEPS - 1, signal.SIGINT))
    first = train.train_supernet(cfg2)
    assert first["exit_code"] == 130 and "val/largest/final" in first  # the finished epoch was validated
    assert torch.load(cfg2.run_dir / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(train, "sandwich", real)
    train.train_supernet(cfg2, resume=True)
    ours, ref = model_state(cfg2.run_dir), model_state(cfg.run_dir)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_a_fresh_run_trains_as_a_run_whose_mac_table_exists(tmp_path: Path) -> None:
    """The first run builds macs.json after seeding (for train.random_max_macs); with dropout drawing from the
    same RNG, building it must not change what the run learns."""
    opts = {"train.epochs": 1, "data.train_subset": 200, "data.val_subset": 100, "train.bn_calib_batches": 1,
            "space.dropout": 0.5, "train.random_max_macs": 1.5e6}
    fresh, present = tiny_cfg(tmp_path, "fresh", **opts), tiny_cfg(tmp_path, "present", **opts)
    assert train.train_supernet(fresh)["exit_code"] == 0
    present.run_dir.mkdir(parents=True)
    shutil.copy(fresh.run_dir / "macs.json", present.run_dir / "macs.json")
    assert train.train_supernet(present)["exit_code"] == 0
    ours, ref = model_state(present.run_dir), model_state(fresh.run_dir)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_checkpoint_from_another_space_is_refused(straight: tuple[Config, dict]) -> None:
    cfg, _ = straight
    config_before = (cfg.run_dir / "config.yaml").read_text()
    other = tiny_cfg(Path(cfg.out_dir), "straight", **{"space.final_widths": [64, 96]})
    ours, theirs = SearchSpace(other.space).space_hash(), SearchSpace(cfg.space).space_hash()
    with pytest.raises(RunError) as err:
        train.train_supernet(other, resume=True)
    text = str(err.value)
    assert ours in text and theirs in text and "name=" in text
    assert (cfg.run_dir / "config.yaml").read_text() == config_before  # the run's own config is untouched


@pytest.mark.parametrize("key, theirs, ours", [("train.epochs", 2, 3), ("seed", 0, 1)])
def test_resume_with_another_recipe_is_refused(straight: tuple[Config, dict], key: str, theirs: int,
                                               ours: int) -> None:
    """The restored optimizer and schedule would keep the old epochs; another seed would move trained-on
    images into validation. Either way the run's config.yaml must go on saying what it trained with."""
    cfg, _ = straight
    config_before = (cfg.run_dir / "config.yaml").read_text()
    with pytest.raises(RunError) as err:
        train.train_supernet(tiny_cfg(Path(cfg.out_dir), "straight", **{key: ours}), resume=True)
    text = str(err.value)
    assert f"{key}={theirs} (this config: {ours})" in text and "config.yaml" in text and "name=" in text
    assert (cfg.run_dir / "config.yaml").read_text() == config_before


SMALL = {"train.epochs": 1, "data.train_subset": 200, "data.val_subset": 100}


def stopped_at_first_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A one-epoch run SIGTERMed on its first step (its checkpoint saved); sandwich restored after."""
    cfg = tiny_cfg(tmp_path, **SMALL)
    with monkeypatch.context() as m:
        m.setattr(train, "sandwich", signal_at(0, signal.SIGTERM))
        assert train.train_supernet(cfg)["exit_code"] == 143
    return cfg


def test_resume_may_change_threads_and_logging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = stopped_at_first_step(tmp_path, monkeypatch)
    again = tiny_cfg(tmp_path, **SMALL, **{"num_threads": 2, "train.log_every": 5, "data.eval_batch_size": 100})
    assert train.train_supernet(again, resume=True)["exit_code"] == 0
    assert "num_threads: 2" in (cfg.run_dir / "config.yaml").read_text()


def test_resume_on_changed_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same split settings, other images held out (a folder gained an image, pickles appeared beside the
    tarball): the rest of the run would train on images its first epochs validated on."""
    cfg = stopped_at_first_step(tmp_path, monkeypatch)
    path = cfg.run_dir / "last.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    torch.save(dict(ckpt, held_out_digest="another-folder"), path)
    before = path.read_bytes()
    with pytest.raises(RunError, match=r"not those .*last\.pt held out.*resuming would train on images it validated"):
        train.train_supernet(cfg, resume=True)
    assert path.read_bytes() == before
    torch.save(ckpt, path)  # the digest it was trained with: the same call resumes
    assert train.train_supernet(cfg, resume=True)["exit_code"] == 0


def test_resuming_a_finished_run_changes_nothing(straight: tuple[Config, dict],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg, result = straight
    run_dir = cfg.run_dir
    # wandb/ is left out: the fixture's offline run may still be flushing it
    files = lambda: {f: f.read_bytes() for f in run_dir.rglob("*") if f.is_file() and "wandb" not in f.parts}  # noqa
    before = files()
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert "val/largest/final" in stored
    # wandb.mode and num_threads may change on resume; they would land in config.yaml if it were rewritten
    again = train.train_supernet(tiny_cfg(Path(cfg.out_dir), "straight", num_threads=2), resume=True)
    assert files() == before
    assert again == {**stored, "exit_code": 0}
    assert again["val/largest/final"] == result["val/largest/final"]
    assert "already finished" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no checkpoint"):
        train.train_supernet(tiny_cfg(tmp_path, "never-ran"), resume=True)


def test_nan_loss_stops_with_a_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg(tmp_path, "nan", **{"train.epochs": 1})
    real, real_sandwich, real_create = train.inplace_distill_loss, train.sandwich, train.create_supernet
    calls = {"n": 0}
    seen: dict = {}

    def poisoned(student, teacher, temperature, kind):
        calls["n"] += 1  # two distilled members per step (smallest, random_0): call 8 = step 3's random_0
        out = real(student, teacher, temperature, kind)
        return out * float("nan") if calls["n"] == 8 else out

    def create(cfg):
        seen["model"] = real_create(cfg)
        return seen["model"]

    def sandwich(space, n_random, seed, step, **kw):
        if step == 3:  # drawn before the step's forwards: the state the checkpoint must hold
            seen["before"] = {k: v.clone() for k, v in seen["model"].state_dict().items()}
        return real_sandwich(space, n_random, seed, step, **kw)

    monkeypatch.setattr(train, "inplace_distill_loss", poisoned)
    monkeypatch.setattr(train, "create_supernet", create)
    monkeypatch.setattr(train, "sandwich", sandwich)
    with pytest.raises(RunError, match=r"step 3 .*'random_0'") as err:
        train.train_supernet(cfg)
    ckpt = train.load_checkpoint(cfg.run_dir / "last.pt", SearchSpace(cfg.space), cfg.train.kernel_transform)
    assert ckpt["step"] == 3 and ckpt["loader"]["pos"] == 3  # the failed step is not counted
    # BN statistics included: the failed step's forwards had moved them
    assert ckpt["model"].keys() == seen["before"].keys()
    for k, v in seen["before"].items():
        assert torch.equal(ckpt["model"][k], v), k
    # the advice is a new run (a resume refuses another train.lr), and its command loads
    text = str(err.value)
    assert "new run" in text and "--resume keeps the recipe" in text
    command = text.split("e.g. ", 1)[1].split()
    assert command[:3] == ["nachos", "supernet", "--config"]
    fresh = load_config(command[3], command[4:], device_type="cpu")
    assert fresh.run_dir != cfg.run_dir and fresh.train.lr < cfg.train.lr
    assert fresh.space == cfg.space and fresh.train.epochs == cfg.train.epochs
    monkeypatch.setattr(train, "inplace_distill_loss", real)
    assert train.train_supernet(cfg, resume=True)["step"] == STEPS_PER_EPOCH  # and it resumes from there


def test_non_finite_gradient_under_a_finite_loss_stops_with_a_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg(tmp_path, "inf-grad", **{"train.epochs": 1, "train.grad_clip": 0.0})
    drawing = {"step": -1}
    real_sandwich, real_create = train.sandwich, train.create_supernet

    def sandwich(space, n_random, seed, step, **kw):
        drawing["step"] = step
        return real_sandwich(space, n_random, seed, step, **kw)

    def create(cfg):
        model = real_create(cfg)
        # the forward (and so the loss) is untouched; only step 3's gradient of one shared weight blows up
        next(model.parameters()).register_hook(lambda g: g * float("inf") if drawing["step"] == 3 else g)
        return model

    monkeypatch.setattr(train, "sandwich", sandwich)
    monkeypatch.setattr(train, "create_supernet", create)
    with pytest.raises(RunError, match=r"non-finite gradient norm at step 3 .*loss finite.*train.warmup_epochs="):
        train.train_supernet(cfg)
    ckpt = train.load_checkpoint(cfg.run_dir / "last.pt", SearchSpace(cfg.space), cfg.train.kernel_transform)
    assert ckpt["step"] == 3 and ckpt["loader"]["pos"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_two_process_gloo_run_agrees_on_archs(tmp_path: Path) -> None:
    overrides = {"out_dir": str(tmp_path), "name": "ddp", "device": "cpu", "num_threads": 1,
                 "data.cache_dir": str(REPO / "data" / "cache"), "data.train_subset": 400, "data.val_subset": 100,
                 "data.batch_size": 100, "train.epochs": 1, "train.bn_calib_batches": 1, "wandb.mode": "disabled"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "supernet.train", "--config", str(TINY), *(f"{k}={v}" for k, v in overrides.items())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # its own session, so that a hang kills torchrun's workers too rather than orphaning them
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"the 2-process run hung:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert len(metrics["arch_digests"]) == 2 and len(set(metrics["arch_digests"])) == 1
    # averaged gradients keep the replicas' weights bit-identical
    assert len(metrics["param_checksums"]) == 2 and len(set(metrics["param_checksums"])) == 1
    assert metrics["step"] == 4
    assert (tmp_path / "ddp" / "last.pt").is_file()


def test_sandwich_is_a_function_of_seed_and_step() -> None:
    space = SearchSpace(tiny_cfg(Path("/tmp")).space)
    a = train.sandwich(space, 2, seed=0, step=5)
    assert a == train.sandwich(space, 2, seed=0, step=5)
    assert [n for n, _ in a] == ["largest", "smallest", "random_0", "random_1"]
    assert a[0][1] == space.largest() and a[1][1] == space.smallest()
    draws = {train.sandwich(space, 1, seed=0, step=s)[2][1] for s in range(20)}
    assert len(draws) > 10  # random members change from step to step


def test_random_members_stay_within_the_mac_budget(tmp_path: Path) -> None:
    from supernet.costs import MacTable

    space = SearchSpace(tiny_cfg(tmp_path).space)
    table = MacTable(space, tiny_cfg(tmp_path).exits)
    macs = lambda arch: table.backbone_costs(arch)[-1]  # noqa: E731
    free = [train.sandwich(space, 1, seed=0, step=s)[2][1] for s in range(60)]
    budget = sorted(macs(a) for a in free)[len(free) // 3]  # a third of free draws fit
    accept = train.budget_filter(tiny_cfg(tmp_path, **{"train.random_max_macs": budget}), space, table)
    drawn = [train.sandwich(space, 2, seed=0, step=s, accept=accept)[2:] for s in range(30)]
    archs = [a for members in drawn for _, a in members]
    assert all(macs(a) <= budget for a in archs)
    assert len(set(archs)) > 5  # still a spread of subnets, not one
    # the validated random subnet comes from the same region, in every seed
    assert all(macs(train.validation_subnets(space, seed, accept)["random"]) <= budget for seed in range(10))
    assert any(macs(train.validation_subnets(space, seed, None)["random"]) > budget for seed in range(10))
    assert train.budget_filter(tiny_cfg(tmp_path), space, None) is None  # 0 = anywhere
    with pytest.raises(RunError, match="random_max_macs.*below the smallest"):
        train.budget_filter(tiny_cfg(tmp_path, **{"train.random_max_macs": macs(space.smallest()) - 1}), space, table)


def test_alpha_divergence_is_zero_at_the_teacher_and_pulls_towards_it() -> None:
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    assert train.alpha_divergence(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(1, 3, requires_grad=True)
    train.alpha_divergence(student, teacher).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 2]  # gradient descent raises class 0, lowers class 2
    # a teacher so sure that its other probabilities underflow to 0 in float32: finite, not NaN
    sure = torch.tensor([[200.0, 0.0, 0.0]])
    student = torch.zeros(1, 3, requires_grad=True)
    loss = train.alpha_divergence(student, sure)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all() and student.grad[0, 0] < 0


def test_distillation_gradients_keep_their_scale_across_temperatures() -> None:
    """Both losses scale by T^2 (Hinton et al.): at a high temperature the soft-target gradient of
    logits z is ~ (z_s - z_t) / (N T^2) before the scale, so T^2 brings it back to the T=1 scale."""
    teacher = torch.tensor([[0.3, 0.0, -0.2]])
    norms = {}
    for kind in ("kl", "alpha"):
        for t in (1.0, 4.0):
            student = torch.zeros(1, 3, requires_grad=True)
            train.inplace_distill_loss(student, teacher, t, kind).backward()
            norms[kind, t] = float(student.grad.norm())
    for kind in ("kl", "alpha"):
        assert norms[kind, 4.0] == pytest.approx(norms[kind, 1.0], rel=0.1)


class Recorder:
    """Stands in for the W&B tracker: keeps every logged row in memory."""

    rows: list[dict] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        Recorder.rows = []

    def log(self, metrics: dict, step: int | None = None) -> None:
        Recorder.rows.append({**metrics, "_step": step})

    def summary(self, values: dict) -> None:
        pass

    def finish(self) -> None:
        pass


def test_learned_criterion_trains_with_the_nachos_terms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "Tracker", Recorder)
    cfg = tiny_cfg(tmp_path, "learned", **{"exits.criterion": "learned", "exits.max_macs": 3e5,
                                           "data.train_subset": 400, "data.val_subset": 100})
    result = train.train_supernet(cfg)
    assert result["exit_code"] == 0
    steps = [r for r in Recorder.rows if "train/loss" in r]
    first_epoch, second_epoch = steps[:4], steps[4:]
    for r in steps:
        assert {"train/learned/cls", "train/learned/bce", "train/learned/macs"} <= set(r)
    # the support set is drawn from the second epoch on
    assert not any("train/learned/support" in r for r in first_epoch)
    assert all("train/learned/support" in r for r in second_epoch)
    assert max(r["train/learned/macs"] for r in steps) > 0  # the tiny largest (1.8 M MACs) is over 0.3 M
    for member in ("largest", "smallest", "random"):
        assert 0.0 <= result[f"val/{member}/exit_0_ece"] <= 1.0


def test_exit_costs_are_cumulative_and_match_ptflops(tmp_path: Path) -> None:
    from supernet.costs import profile_exit_costs

    cfg = tiny_cfg(tmp_path, "costs", **{"exits.criterion": "learned"})
    space = SearchSpace(cfg.space)
    costs = train.ExitCosts(space, train.shared_mac_table(cfg))
    big, small = costs(space.largest()), costs(space.smallest())
    assert len(big) == len(space.available_exits(space.largest())) + 1
    assert (big[1:] > big[:-1]).all() and (small[1:] > small[:-1]).all()
    assert (big > small).all()
    model = train.create_supernet(cfg)
    reference = profile_exit_costs(model.extract(space.largest()))
    assert big.tolist() == pytest.approx(reference.tolist())
    assert costs(space.largest()) is big and costs(space.smallest()) is small  # the two that recur are kept
    others = {space.sample(random.Random(i)) for i in range(20)} - {space.largest(), space.smallest()}
    for arch in others:
        assert costs(arch).tolist() == pytest.approx(train.ExitCosts(space, costs.table)(arch).tolist())
    assert len(costs.cache) == 2  # random members are not kept: a run draws tens of thousands


def test_member_label_weight_mixes_labels_into_the_distilled_loss(tmp_path: Path) -> None:
    from supernet.network import create_supernet

    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = create_supernet(cfg).eval()  # eval: no dropout, so every forward is the same
    space = SearchSpace(cfg.space)
    arch = space.smallest()
    model.set_active(arch)
    x, y = torch.randn(8, cfg.space.in_channels, cfg.space.input_size, cfg.space.input_size), torch.arange(8) % 10
    teacher, other_teacher = torch.randn(8, 10), torch.randn(8, 10)

    def loss(t: torch.Tensor | None, w: float) -> float:
        with torch.no_grad():
            return float(train.member_loss(model, arch, x, y, t, cfg, None, None, 0, train.autocast_factory(
                torch.device("cpu"), False), label_weight=w)[0])

    labels_only = loss(None, 0.0)
    assert loss(teacher, 1.0) == pytest.approx(labels_only, abs=1e-6)  # the teacher is ignored
    assert loss(other_teacher, 1.0) == pytest.approx(labels_only, abs=1e-6)
    distilled = loss(teacher, 0.0)
    assert abs(distilled - labels_only) > 1e-3 and abs(loss(other_teacher, 0.0) - distilled) > 1e-3
    assert loss(teacher, 0.25) == pytest.approx(0.75 * distilled + 0.25 * labels_only, abs=1e-5)


def test_supernet_with_member_label_weight_one_never_distils(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("distilled though train.member_label_weight=1")

    monkeypatch.setattr(train, "inplace_distill_loss", refuse)
    cfg = tiny_cfg(tmp_path, **{"train.epochs": 1, "train.member_label_weight": 1.0, "data.train_subset": 200,
                                "data.val_subset": 100})
    assert train.train_supernet(cfg)["exit_code"] == 0


def test_kernel_transform_trains_and_its_checkpoint_is_read_as_trained(tmp_path: Path) -> None:
    from search.backend import build_supernet

    cfg = tiny_cfg(tmp_path, **{"train.epochs": 1, "train.kernel_transform": True, "data.train_subset": 200,
                                "data.val_subset": 100})
    assert train.train_supernet(cfg)["exit_code"] == 0
    ckpt = torch.load(cfg.run_dir / "last.pt", map_location="cpu", weights_only=False)
    transforms = {k: v for k, v in ckpt["model"].items() if "transform_" in k}
    assert transforms and all(not torch.equal(v, torch.eye(len(v))) for v in transforms.values())  # they learned
    plain = tiny_cfg(tmp_path, **{"train.epochs": 2, "data.train_subset": 200, "data.val_subset": 100})
    with pytest.raises(RunError, match="train.kernel_transform=true"):
        train.train_supernet(plain, resume=True)
    # the search, eval and export read the checkpoint's weights whatever this config says
    model = build_supernet(plain, ckpt, cfg.run_dir / "last.pt", None)
    assert all(torch.equal(model.get_parameter(k), v) for k, v in transforms.items())
