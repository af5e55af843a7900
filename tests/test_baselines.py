"""Static baselines against the early-exit networks: scored in the precision the EENs are scored in,
and counted as like-for-like rivals only when trained as long as the EENs' backbones."""
from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import eval.baselines as baselines
from nachos.runtime import RunError
from supernet.space import SearchSpace
from supernet.static import StaticEENet
from tests.test_report import tiny_cfg


def test_baselines_train_under_autocast_but_are_scored_without_it(tmp_path: Path, monkeypatch) -> None:
    """``nachos eval`` scores the EENs in fp32; a bf16-scored rival would move head-to-head gaps of a
    tenth of a point. CPU bf16 autocast stands in for the GPU's (amp is on only there)."""
    monkeypatch.setattr(baselines, "autocast_factory",
                        lambda device, enabled: lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    seen, forward = [], StaticEENet.forward

    def recording(self, *args, **kwargs):
        seen.append((self.training, torch.is_autocast_enabled("cpu")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(StaticEENet, "forward", recording)
    cfg = tiny_cfg(tmp_path)
    arch = SearchSpace.from_config(cfg.space).sample(random.Random(3))
    baselines.train_static(cfg, arch, 1, "probe", tmp_path / "b")
    assert {on for training, on in seen if training} == {True}  # training keeps amp
    assert [on for training, on in seen if not training] and not any(on for training, on in seen if not training)


def test_a_damaged_mac_table_stops_a_baseline_before_it_trains(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_cfg(tmp_path)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "macs.json").write_text('{"format": "nachos-macs", "entr')  # cut short by a crash
    steps = []
    monkeypatch.setattr(StaticEENet, "forward", lambda self, *a, **k: steps.append(1))
    arch = SearchSpace.from_config(cfg.space).sample(random.Random(3))
    with pytest.raises(RunError, match="macs.json"):
        baselines.train_static(cfg, arch, 1, "probe", tmp_path / "b")
    assert steps == [] and not (tmp_path / "b" / "probe.pt").exists()


def test_static_rivals_train_as_long_as_the_eens_backbones_did() -> None:
    from eval.analysis import like_for_like, rival_epochs
    from eval.run_folder import Export

    def export(eid: str, ft: dict | None = None) -> Export:
        return Export(eid, Path(eid), {} if ft is None else {"finetune": ft}, {"accuracy": 0.9})

    hand, hand64 = {"tag": "hand", "epochs": 32}, {"tag": "hand-e64", "epochs": 64}
    run = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(epochs=32)), exports=[export("a")],
                          baselines=[hand, hand64])
    assert rival_epochs(run) == 32 and like_for_like(run, hand)
    # tuned 10 epochs from the supernet's weights: 42 in all, so a static network of 32 would flatter it
    run.exports.append(export("a-ft10", {"init": "inherited", "parent": "a", "epochs": 10}))
    assert rival_epochs(run) == 42 and not like_for_like(run, hand) and like_for_like(run, hand64)
    # a no-exit control is a rival, not an EEN; retrained from scratch, an EEN counts its own epochs alone
    run.exports.append(export("a-ft20-w0", {"init": "inherited", "parent": "a", "epochs": 20, "exit_weight": 0.0}))
    run.exports.append(export("a-scratch40", {"init": "scratch", "parent": "a", "epochs": 40}))
    assert rival_epochs(run) == 42
    # exits on the frozen backbone of the 64-epoch static network: its 64 (the heads leave the backbone as
    # it was), then 3 more trained jointly, as a no-exit control of that lineage counts them
    run.exports.append(export("a-heads5", {"init": "static", "parent": "a", "epochs": 5,
                                           "static_baseline": {"tag": "hand-e64"}}))
    assert rival_epochs(run) == 64
    run.exports.append(export("a-heads5-ft3", {"init": "inherited", "parent_init": "static", "parent": "a-heads5",
                                               "epochs": 3}))
    assert rival_epochs(run) == 67 and not like_for_like(run, hand64)


def test_default_baseline_epochs_match_the_eens_training(tmp_path: Path) -> None:
    """``export.baseline_epochs=0`` trains the rivals as long as the EENs: a static network of the
    supernet's epochs would not count against an EEN fine-tuned further from its weights."""
    import json

    from nachos.config import save_config

    cfg = tiny_cfg(tmp_path)
    save_config(cfg, cfg.run_dir / "config.yaml")
    assert baselines.default_epochs(cfg) == cfg.train.epochs  # nothing evaluated yet: the supernet's
    folder = cfg.run_dir / "export" / "x-ft3"
    folder.mkdir(parents=True)
    (folder / "arch.json").write_text(json.dumps({"id": "x-ft3", "finetune": {"init": "inherited", "epochs": 3}}))
    (folder / "eval.json").write_text(json.dumps({"id": "x-ft3", "accuracy": 0.5, "expected_macs": 1.0}))
    assert baselines.default_epochs(cfg) == cfg.train.epochs + 3


def test_a_finished_baseline_keeps_the_origin_of_every_mode_that_chose_it(tmp_path: Path, monkeypatch,
                                                                            capsys) -> None:
    """The front, matched and scored modes all name a backbone `backbone-<key>`: a later mode finds it
    trained by an earlier one, and the report's kind column and commands must name both."""
    import argparse
    import json

    from eval.report import baseline_commands, baseline_lines
    from eval.run_folder import load_run

    cfg = tiny_cfg(tmp_path, "export.baseline_epochs=3", "train.epochs=3")
    arch = SearchSpace.from_config(cfg.space).sample(random.Random(3))
    tag, path = f"backbone-{arch.key()}", cfg.run_dir / "baselines" / f"backbone-{arch.key()}.json"
    path.parent.mkdir(parents=True)
    front = {"kind": "front backbone", "arch_key": arch.key(), "solutions": []}
    path.write_text(json.dumps({"tag": tag, "run": cfg.name, "origin": front, "arch": arch.to_dict(),
                                "arch_str": str(arch), "arch_key": arch.key(), "exits": [], "epochs": 3,
                                "test_accuracy": 0.5, "val_accuracy": 0.5, "macs": 1e6, "params": 10,
                                "train_seconds": 1.0, "fingerprint": baselines._fingerprint(cfg, arch, 3)}))
    matched = {"kind": "matched static", "arch_key": arch.key(), "max_baselines": 4, "solutions": []}
    monkeypatch.setattr(baselines, "choose_baselines", lambda *a: [(tag, arch, matched)])
    monkeypatch.setattr(baselines, "train_static", lambda *a, **k: pytest.fail("trained a finished baseline"))
    for _ in range(2):  # the same mode again adds nothing
        assert baselines.baseline_command(cfg, argparse.Namespace()) == 0
        assert "already trained" in capsys.readouterr().err
        assert json.loads(path.read_text())["origin"] == dict(front, also=[matched])
    run = load_run(cfg, cfg.run_dir)
    row = next(ln for ln in baseline_lines(run) if ln.startswith(f"| {tag} "))
    assert row.split(" | ")[1] == "front backbone, matched static"
    assert baseline_commands(run, "--config C") == [
        "nachos baseline --config C export.baselines=backbones export.max_baselines=1 export.baseline_epochs=3",
        "nachos baseline --config C export.baselines=matched export.max_baselines=4 export.baseline_epochs=3"]


def test_a_run_of_static_networks_alone_saves_its_config_for_the_report_and_archive(tmp_path: Path, monkeypatch,
                                                                                     capsys) -> None:
    import argparse
    import dataclasses

    import yaml

    from eval.archive import archive_command

    cfg = tiny_cfg(tmp_path, "name=alone", "data.augment.cutout=4", "export.baselines=hand")
    arch = SearchSpace.from_config(cfg.space).sample(random.Random(3))
    result = {"test_accuracy": 0.5, "val_accuracy": 0.5, "macs": 1e6, "params": 10, "train_seconds": 1.0,
              "origin": {"kind": "hand-designed"}, "arch_str": str(arch)}
    monkeypatch.setattr(baselines, "choose_baselines", lambda *a: [("hand", arch, {"kind": "hand-designed"})])
    monkeypatch.setattr(baselines, "train_static", lambda *a, **k: result)
    assert baselines.baseline_command(cfg, argparse.Namespace()) == 0
    saved = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    assert saved["name"] == "alone" and saved["data"]["augment"]["cutout"] == 4
    archive = tmp_path / "archive"
    assert archive_command(dataclasses.replace(cfg, export=dataclasses.replace(
        cfg.export, archive_dir=str(archive))), None) == 0
    assert (archive / "alone" / "config.yaml").is_file() and "not found" not in capsys.readouterr().out
    # a run's own config (a supernet's, say) is its record: another command line does not overwrite it
    other = dataclasses.replace(cfg, num_threads=cfg.num_threads + 3, data=dataclasses.replace(
        cfg.data, augment=dataclasses.replace(cfg.data.augment, cutout=8)))
    assert baselines.baseline_command(other, argparse.Namespace()) == 0
    again = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    assert again["data"]["augment"]["cutout"] == 4 and again["num_threads"] == saved["num_threads"]


def test_a_static_baseline_resumed_after_a_crash_ends_as_one_trained_straight(tmp_path: Path, interrupted) -> None:
    cfg = tiny_cfg(tmp_path)
    arch = SearchSpace.from_config(cfg.space).sample(random.Random(3))
    straight = baselines.train_static(cfg, arch, 2, "probe", tmp_path / "a")
    interrupted(baselines.train_static, cfg, arch, 2, "probe", tmp_path / "b")
    ckpt = torch.load(tmp_path / "b" / "probe.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == arch.to_dict() and not (tmp_path / "b" / "probe.json").exists()
    resumed = baselines.train_static(cfg, arch, 2, "probe", tmp_path / "b")
    assert resumed["history"][0] == ckpt["history"][0]  # epoch 1 (its seconds too) came from the checkpoint
    assert resumed["steps"] == straight["steps"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    a = torch.load(tmp_path / "a" / "probe.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "probe.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert all("train_accuracy" in h and "lr" in h for h in resumed["history"])


def test_fit_refuses_extra_checkpoint_state_that_would_overwrite_its_own(tmp_path: Path) -> None:
    from eval.fit import fit

    class OneBatch(list):  # what fit reads from a nachos loader
        def state_dict(self) -> dict:
            return {}

    cfg = tiny_cfg(tmp_path)
    net = torch.nn.Linear(3, 2)
    loader = OneBatch([(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))])

    def run(extra: dict, path: Path) -> dict:
        return fit(net, loader, lambda x, y, _s: (torch.nn.functional.cross_entropy(net(x), y), None), tc=cfg.train,
                   lr=0.1, epochs=1, warmup_epochs=0.0, ckpt_path=path, fingerprint="f", desc="probe", lr_hint="",
                   fmt=torch.contiguous_format, device=torch.device("cpu"), extra_state=extra)

    with pytest.raises(ValueError, match=r"overwrite the checkpoint's own keys \['history'\]"):
        run({"history": [], "arch": 1}, tmp_path / "a.pt")
    assert run({"arch": 1}, tmp_path / "b.pt")["steps"] == 1
    assert torch.load(tmp_path / "b.pt", weights_only=False)["arch"] == 1
