"""Fine-tuning exports: training helps, thresholds are re-chosen optimally within the parent's
validation cost, the result is a complete export, runs resume exactly after an interruption."""
from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import eval.finetune as ft
import nachos.data
from eval.evaluate import validation_cache
from eval.export import load_exported, run_early_exit
from nachos.runtime import RunError
from tests.test_export import ROOT, _cfg, exported  # noqa: F401  (module fixture: tiny supernet, search, 2 exports)


def _copy(folder: Path, run) -> Path:
    dest = run.run_dir / "export" / folder.name
    shutil.copytree(folder, dest)
    return dest


def _val_loader(cfg):
    from nachos.data import load_splits, make_loader

    s = load_splits(cfg)
    return make_loader(cfg, s.val_x, s.val_y, "cpu", train=False, seed=cfg.seed, mean=s.mean, std=s.std)


def _record_member_loss(monkeypatch, keep) -> list:
    """Wrap ``eval.finetune.member_loss``: ``keep(*args)`` of every call, taken as the call is made."""
    calls, member_loss = [], ft.member_loss

    def recording_loss(*args, **kwargs):
        calls.append(keep(*args))
        return member_loss(*args, **kwargs)

    monkeypatch.setattr(ft, "member_loss", recording_loss)
    return calls


def _skip_training(monkeypatch) -> list[dict]:
    """Replace ``eval.finetune.train`` by a no-op; returns the list its calls' arguments go to (with the
    network's state as it was at the call)."""
    calls = []

    def no_training(model, src, ckpt_path, fingerprint, epochs, lr, exit_costs, device, warmup_epochs=0.0, **_):
        calls.append({"state": {k: v.clone() for k, v in model.static_net().state_dict().items()}, "src": src,
                      "ckpt": ckpt_path, "fingerprint": fingerprint, "epochs": epochs, "lr": lr,
                      "warmup": warmup_epochs})
        return {"epochs": epochs, "lr": lr, "warmup_epochs": warmup_epochs, "steps": 0, "train_seconds": 0.0,
                "history": []}

    monkeypatch.setattr(ft, "train", no_training)
    return calls


def test_an_index_picks_the_same_front_solution_as_nachos_export(exported, tmp_path: Path) -> None:
    cfg, front, folders = exported
    cfg = dataclasses.replace(cfg, out_dir=str(tmp_path))
    shutil.copytree(exported[0].run_dir, cfg.run_dir)  # a copy: exports are removed below
    index = {json.loads((f / "arch.json").read_text())["source"]["front_index"]: f.name for f in folders}
    assert sorted(index) == list(range(len(front))) == [0, 1]
    assert sorted(index.values()) != [index[i] for i in range(len(front))]  # folder order is not front order
    for i in (0, 1, -1):
        picked = ft.parents(dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, select=str(i))), None)
        assert [p.name for p in picked] == [index[i % len(front)]]
    one = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, select="1"))
    shutil.rmtree(cfg.run_dir / "export" / index[1])
    with pytest.raises(RunError, match=r"front solution 1 \(pareto.csv\) has not been exported.*export.select=1"):
        ft.parents(one, None)
    with pytest.raises(RunError, match=r"the admissible front has 2 solutions"):
        ft.parents(dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, select="2")), None)
    # a second copy of solution 0: which one is meant cannot be told
    zero = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, select="0"))
    shutil.copytree(cfg.run_dir / "export" / index[0], cfg.run_dir / "export" / "copy-of-0")
    with pytest.raises(RunError, match=r"front solution 0 was exported more than once \(.*copy-of-0"):
        ft.parents(zero, None)
    # an export of an earlier search keeps its front_index, but is another solution: not taken for it
    manifest = cfg.run_dir / "export" / "copy-of-0" / "arch.json"
    old = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**old, "threshold_idx": [j + 1 for j in old["threshold_idx"]]}))
    assert [p.name for p in ft.parents(zero, None)] == [index[0]]
    shutil.rmtree(cfg.run_dir / "export" / index[0])
    with pytest.raises(RunError, match=r"front solution 0 .* has not been exported \(or only from an earlier"):
        ft.parents(zero, None)
    # only fine-tuned exports left: said so, not "the search found no admissible solution"
    manifest.write_text(json.dumps({**old, "finetune": {"epochs": 1}}))
    with pytest.raises(RunError, match="every export under .* is a fine-tuned one already"):
        ft.parents(one, None)


def test_training_normalises_images_as_the_export_does(exported, tmp_path: Path, monkeypatch) -> None:
    """Validation and deployment normalise with the export's statistics; training must too, even
    where statistics of the data read now differ (a changed train part passes the held-out check)."""
    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_epochs=1")
    parent = _copy(parent, run)
    manifest = json.loads((parent / "arch.json").read_text())
    mean, std = [0.25, 0.5, 0.75], [0.2, 0.3, 0.4]
    manifest["input"].update(mean=mean, std=std)
    (parent / "arch.json").write_text(json.dumps(manifest))
    seen, make_loader = [], nachos.data.make_loader

    class Stop(Exception):
        pass

    def recording(cfg, x, y, device, train, seed, mean=None, std=None, **kw):
        if train:
            seen.append((list(mean), list(std)))
            raise Stop
        return make_loader(cfg, x, y, device, train=train, seed=seed, mean=mean, std=std, **kw)

    monkeypatch.setattr(nachos.data, "make_loader", recording)
    with pytest.raises(Stop):
        ft.finetune_export(parent, run)
    assert seen == [(pytest.approx(mean), pytest.approx(std))]


def _two_exit_export(exported) -> tuple:
    cfg, front, folders = exported
    folder = next(f for f in folders if len(json.loads((f / "arch.json").read_text())["exits"]) == 2)
    return cfg, folder


@pytest.mark.slow
def test_finetune_trains_and_rechooses_thresholds_within_the_parent_cost(exported, tmp_path: Path) -> None:
    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_epochs=4", "export.finetune_lr=0.05")
    parent = _copy(parent, run)
    out = ft.finetune_export(parent, run)
    # named after its length, so fine-tunes of different lengths sit side by side
    assert out == parent.parent / f"{parent.name}-ft4" and not out.with_name(out.name + ".pt").exists()
    m = json.loads((out / "arch.json").read_text())
    p = json.loads((parent / "arch.json").read_text())
    info = m["finetune"]
    assert info["parent"] == parent.name and info["epochs"] == 4 and len(info["history"]) == 4
    # the random-weight parent learns: its final classifier gains on the held-out validation split
    assert info["val_after"]["final_classifier_accuracy"] > info["val_before"]["final_classifier_accuracy"] + 0.05
    assert info["history"][-1]["train_loss"] < info["history"][0]["train_loss"]
    assert m["arch"] == p["arch"] and m["exits"] == p["exits"] and m["macs"] == p["macs"]
    # "before" is scored from the prediction cache: it must equal the parent's recorded validation run
    assert info["val_before"]["accuracy"] == pytest.approx(p["validation"]["accuracy"], abs=1e-12)
    assert info["val_before"]["expected_macs"] == pytest.approx(p["expected_macs"], rel=1e-12)

    # thresholds: the best validation accuracy over the whole grid within the parent's expected MACs
    from search.scoring import score_direct, threshold_grid

    model = load_exported(out)
    cache = validation_cache(model, _val_loader(run))
    s = run.search
    grid = threshold_grid(s.threshold_min, s.threshold_max, s.threshold_steps)
    costs = np.asarray(m["macs"]["exit_costs"])
    best = max(acc for idx in itertools.product(range(len(grid)), repeat=len(m["exits"]))
               for acc, _, cost in [score_direct(cache, (0, 1), grid[list(idx)], "softmax", costs)]
               if cost <= p["expected_macs"] * (1 + 1e-9))
    assert m["validation"]["accuracy"] == pytest.approx(best, abs=1e-12)
    assert m["expected_macs"] <= p["expected_macs"] * (1 + 1e-9)
    assert m["thresholds"] == pytest.approx([float(grid[j]) for j in m["threshold_idx"]])

    # a complete export: the loaded files reproduce the recorded validation figures, all forms agree
    pred, ex, _, labels = run_early_exit(model, _val_loader(run))
    counts = np.bincount(ex, minlength=3)
    assert float((pred == labels).mean()) == pytest.approx(m["validation"]["accuracy"], abs=1e-12)
    assert float(counts @ costs / len(labels)) == pytest.approx(m["expected_macs"], rel=1e-12)
    assert m["checks"]["onnx_same_exits"] == 1.0 and m["checks"]["torchscript_same_exits"] == 1.0

    # the parents of a run are the exports not fine-tuned themselves; a fine-tuned one is refused
    assert ft.parents(run, None) == [parent]
    second = _copy(next(f for f in exported[2] if f.name != parent.name), run)
    assert sorted(ft.parents(dataclasses.replace(run, export=dataclasses.replace(run.export, select="all")),
                             None)) == sorted([parent, second])
    ms = {f: json.loads((f / "arch.json").read_text()) for f in (parent, second)}
    best = max(ms, key=lambda f: (ms[f]["validation"]["accuracy"], -ms[f]["expected_macs"]))
    assert ft.parents(run, None) == [best]  # export.select=best by default
    with pytest.raises(RunError, match="already a fine-tuned export"):
        ft.finetune_export(out, run)


@pytest.mark.slow
def test_finetune_resumes_exactly_after_an_interruption(exported, tmp_path: Path, monkeypatch, interrupted) -> None:
    cfg, parent = _two_exit_export(exported)
    settings = ("export.finetune_epochs=2", "export.finetune_lr=0.05", "export.onnx=false",
                "export.torchscript=false")
    first = _cfg(tmp_path / "a", *settings)
    loads, load_splits = [], nachos.data.load_splits
    monkeypatch.setattr(nachos.data, "load_splits", lambda *a, **k: loads.append(1) or load_splits(*a, **k))
    straight = ft.finetune_export(_copy(parent, first), first)
    assert len(loads) == 1  # one data load per command: training uses the splits the held-out check saw

    run = _cfg(tmp_path / "b", *settings)
    copy = _copy(parent, run)
    interrupted(ft.finetune_export, copy, run)
    ckpt = torch.load(copy.parent / f"{ft.finetuned_name(copy.name, 2)}.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    assert not (copy.parent / ft.finetuned_name(copy.name, 2)).exists()  # nothing half-written
    resumed = ft.finetune_export(copy, run)
    a, b = load_exported(straight).state_dict(), load_exported(resumed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((f / "arch.json").read_text()) for f in (straight, resumed))
    assert mb["finetune"]["history"][0] == ckpt["history"][0]  # epoch 1 (its seconds too) came from the checkpoint
    assert ma["thresholds"] == mb["thresholds"] and ma["validation"]["accuracy"] == mb["validation"]["accuracy"]

    # a finished export with the same settings is not trained again
    monkeypatch.setattr(ft, "train", lambda *a, **k: pytest.fail("retrained a finished export"))
    assert ft.finetune_export(copy, run) == resumed


def test_scratch_init_retrains_from_the_static_baselines_start(exported, tmp_path: Path, monkeypatch) -> None:
    from nachos.runtime import seed_everything
    from supernet.static import StaticEENet

    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_init=scratch", "export.finetune_epochs=3", "export.finetune_lr=0.5",
               "export.onnx=false", "export.torchscript=false")
    parent = _copy(parent, run)
    m = json.loads((parent / "arch.json").read_text())
    calls = _skip_training(monkeypatch)
    out = ft.finetune_export(parent, run)
    [seen] = calls
    assert out == parent.parent / f"{parent.name}-scratch3" and seen["ckpt"] == out.with_name(out.name + ".pt")
    # the static baselines' schedule, not finetune_lr
    assert seen["epochs"] == 3 and seen["lr"] == run.train.lr != 0.5 and seen["warmup"] == run.train.warmup_epochs
    seed_everything(run.seed)
    fresh = StaticEENet.from_description(m["description"]).state_dict()
    inherited = load_exported(parent).static_net().state_dict()
    weights = [k for k in fresh if k.endswith("weight") and fresh[k].dim() > 1]
    assert weights and all(torch.equal(seen["state"][k], fresh[k]) for k in fresh)
    assert not any(torch.equal(seen["state"][k], inherited[k]) for k in weights)
    info = json.loads((out / "arch.json").read_text())["finetune"]
    assert info["init"] == "scratch" and info["parent"] == parent.name


def test_a_finetuned_export_records_its_own_validation_figures(exported, tmp_path: Path, monkeypatch) -> None:
    """The manifest's ``validation`` figures are the fine-tuned network's, thresholds included, on the
    validation split, with the fields an export writes (one function writes both)."""
    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_epochs=1", "export.onnx=false", "export.torchscript=false")
    parent = _copy(parent, run)
    _skip_training(monkeypatch)
    out = ft.finetune_export(parent, run)
    val, parent_val = (json.loads((f / "arch.json").read_text())["validation"] for f in (out, parent))
    model = load_exported(out, "cpu")
    pred, ex, _, labels = run_early_exit(model, _val_loader(cfg))
    counts = np.bincount(ex, minlength=model.num_exits + 1)
    costs = json.loads((out / "arch.json").read_text())["macs"]["exit_costs"]
    assert val["split"] == "val" and val["images"] == len(labels)
    assert val["accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert val["exit_counts"] == counts.tolist()
    assert val["expected_macs"] == pytest.approx(float(counts @ np.asarray(costs)) / len(labels))
    assert set(parent_val) - {"search", "same_exits_as_search"} <= set(val)


def _reexport_with_other_bits(folder: Path) -> None:
    """What a re-export may do: the same network whose BN statistics differ in the last bits."""
    from safetensors.torch import load_file, save_file

    from eval.onnx_runner import sha256_file

    m = json.loads((folder / "arch.json").read_text())
    path = folder / m["weights"]
    weights = load_file(path)
    key = next(k for k in weights if k.endswith("running_mean"))
    weights[key] = weights[key] + 1e-6
    save_file(weights, path)
    m["files"][m["weights"]] = sha256_file(path)
    (folder / "arch.json").write_text(json.dumps(m))


@pytest.mark.parametrize("init, kept", [("scratch", True), ("inherited", False)])
def test_a_reexported_parent_keeps_fresh_weight_checkpoints_only(exported, tmp_path: Path, monkeypatch,
                                                                  init: str, kept: bool) -> None:
    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, f"export.finetune_init={init}", "export.finetune_epochs=1", "export.onnx=false",
               "export.torchscript=false")
    parent = _copy(parent, run)
    calls = _skip_training(monkeypatch)
    ft.finetune_export(parent, run)
    _reexport_with_other_bits(parent)
    if kept:
        ft.finetune_export(parent, run)  # a finished export with the same fingerprint is not trained again
    else:  # tuned from the parent's former weights: refused, not replaced (the name cannot tell the two apart)
        with pytest.raises(RunError, match="fine-tuned with other settings"):
            ft.finetune_export(parent, run)
    assert len(calls) == 1


def test_other_settings_under_the_same_name_are_refused_not_trained_over(exported, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """The name holds the epochs, not the learning rate: another one must not replace a finished export
    (with its eval.json); an unfinished one's checkpoint is guarded by ``resume_training``."""
    cfg, parent = _two_exit_export(exported)
    settings = ("export.finetune_epochs=1", "export.onnx=false", "export.torchscript=false")
    run, other = (_cfg(tmp_path, f"export.finetune_lr={lr}", *settings) for lr in (0.05, 0.01))
    parent = _copy(parent, run)
    calls = _skip_training(monkeypatch)
    out = ft.finetune_export(parent, run)
    (out / "eval.json").write_text("{}")
    with pytest.raises(RunError, match=r"export.finetune_lr=0.05, not 0.01; pass the settings .* move or remove"):
        ft.finetune_export(parent, other)
    assert (out / "eval.json").is_file() and len(calls) == 1
    assert ft.finetune_export(parent, run) == out and len(calls) == 1  # the same settings: skipped, as before


def test_an_export_of_other_held_out_images_is_refused(exported, tmp_path: Path, monkeypatch) -> None:
    """The data changed after the export (same split settings, other images held out): the fine-tune's
    validation would count images the supernet trained on."""
    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_epochs=1", "export.onnx=false", "export.torchscript=false")
    parent = _copy(parent, run)
    manifest = json.loads((parent / "arch.json").read_text())
    assert manifest["source"]["held_out_digest"]  # the export records what it was scored on
    manifest["source"]["held_out_digest"] = "another-folder"
    (parent / "arch.json").write_text(json.dumps(manifest))
    calls = _skip_training(monkeypatch)
    with pytest.raises(RunError, match=r"not those .* held out.*Fine-tune with the data it was exported with"):
        ft.finetune_export(parent, run)
    assert calls == []


def test_a_static_baseline_serves_only_while_its_checkpoint_is_the_network_its_record_describes(
        tmp_path: Path) -> None:
    """A retrain of the same tag overwrites the checkpoint every epoch but the record only at its end."""
    folder = tmp_path / "baselines"
    folder.mkdir()
    split = {"name": "cifar10", "val_fraction": 0.1, "seed": 0}
    recipe = {"seed": 0, "data": {"name": "cifar10", "val_fraction": 0.1, "train_subset": 0}}
    rec = {"tag": "hand", "arch_key": "k", "epochs": 4, "fingerprint": "aaaa", "recipe": recipe}
    (folder / "hand.json").write_text(json.dumps(rec))
    torch.save({"fingerprint": "aaaa", "epoch": 4}, folder / "hand.pt")
    assert ft.static_backbone(tmp_path, "k", 4, split) == (rec, folder / "hand.pt")
    for written in ({"fingerprint": "bbbb", "epoch": 1}, {"fingerprint": "aaaa", "epoch": 3}):
        torch.save(written, folder / "hand.pt")
        with pytest.raises(RunError, match="does not hold the network hand.json records .* let it finish"):
            ft.static_backbone(tmp_path, "k", 4, split)
    # a baseline copied from a run of another seed (or held-out share) trained on this split's validation images
    torch.save({"fingerprint": "aaaa", "epoch": 4}, folder / "hand.pt")
    for other in ({"seed": 1}, {"val_fraction": 0.2}):
        with pytest.raises(RunError, match=r"another train/validation split .* hand.json \(.*\).*nachos baseline"):
            ft.static_backbone(tmp_path, "k", 4, {**split, **other})


@pytest.mark.slow
def test_static_init_trains_only_new_heads_on_the_static_baselines_backbone(exported, tmp_path: Path) -> None:
    from eval.baselines import train_static
    from supernet.space import Arch

    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_init=static", "export.finetune_epochs=2", "export.onnx=false",
               "export.torchscript=false")
    parent = _copy(parent, run)
    m = json.loads((parent / "arch.json").read_text())
    with pytest.raises(RunError, match="nachos baseline"):  # no static network of this arch trained yet
        ft.finetune_export(parent, run)
    base = train_static(run, Arch.from_dict(m["arch"]), run.train.epochs, "static", run.run_dir / "baselines")
    out = ft.finetune_export(parent, run)
    assert out.name == f"{parent.name}-heads2"
    net = load_exported(out).static_net()
    ckpt = torch.load(run.run_dir / "baselines" / "static.pt", weights_only=False)
    static = ft.StaticEENet.from_description(dict(net.description(), exit_ids=[]))
    static.load_state_dict(ckpt["model"])
    # the backbone is the static network's, weights and BN statistics; the heads were trained
    for a, b in zip(static.backbone_modules(), net.backbone_modules(), strict=True):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb), ka
    inherited = load_exported(parent).static_net()
    for h_new, h_old in zip(net.heads, inherited.heads, strict=True):
        assert not torch.equal(h_new.state_dict()[next(iter(h_new.state_dict()))],
                               h_old.state_dict()[next(iter(h_old.state_dict()))])
    info = json.loads((out / "arch.json").read_text())["finetune"]
    assert info["init"] == "static" and info["static_baseline"]["tag"] == "static"
    # so the final classifier keeps the static network's validation accuracy
    assert info["val_after"]["final_classifier_accuracy"] == pytest.approx(base["val_accuracy"], abs=2 / 300)
    # heads on a frozen backbone without the exits' loss would train nothing
    off = _cfg(tmp_path, "export.finetune_init=static", "export.finetune_epochs=2", "export.finetune_exit_weight=0")
    with pytest.raises(RunError, match="finetune_exit_weight=0 with export.finetune_init=static trains nothing"):
        ft.finetune_export(parent, off)
    # nor does a frozen backbone take any share of the exits' gradient
    shared = _cfg(tmp_path, "export.finetune_init=static", "export.finetune_epochs=2", "exits.backbone_grad=0.5")
    with pytest.raises(RunError, match="exits.backbone_grad=0.5 with export.finetune_init=static"):
        ft.finetune_export(parent, shared)


@pytest.mark.slow
def test_static_teacher_distils_the_final_classifier_from_the_static_network(exported, tmp_path: Path,
                                                                           monkeypatch) -> None:
    from eval.baselines import train_static
    from supernet.space import Arch

    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_teacher=static", "export.finetune_epochs=1", "export.onnx=false",
               "export.torchscript=false")
    parent = _copy(parent, run)
    with pytest.raises(RunError, match="nachos baseline"):  # no static network of this arch trained yet
        ft.finetune_export(parent, run)
    m = json.loads((parent / "arch.json").read_text())
    base = train_static(run, Arch.from_dict(m["arch"]), run.train.epochs, "static", run.run_dir / "baselines")
    # a baseline of the same split settings that held out other images (the data changed) is refused
    record = run.run_dir / "baselines" / "static.json"
    record.write_text(json.dumps(dict(base, held_out_digest="0" * 16)))
    with pytest.raises(RunError, match="not those .*static.pt held out.*validation images.*nachos baseline"):
        ft.finetune_export(parent, run)
    record.write_text(json.dumps(base))
    calls = _record_member_loss(monkeypatch, lambda net, arch, x, y, teacher, *_: (
        x.clone(), None if teacher is None else teacher.clone()))
    out = ft.finetune_export(parent, run)
    assert out.name == f"{parent.name}-ft1-kd" and calls
    # every step's target is the static network's final logits for that very batch
    static = ft.load_static_network(run.run_dir / "baselines" / "static.pt", load_exported(parent).static_net())
    with torch.no_grad():
        for x, target in calls:
            assert target is not None and torch.allclose(target, static(x)[-1].float(), atol=1e-5)
    info = json.loads((out / "arch.json").read_text())["finetune"]
    assert info["teacher"]["tag"] == "static" and info["teacher"]["test_accuracy"] == base["test_accuracy"]
    assert "static_baseline" not in info and info["init"] == "inherited"
    # heads on the frozen static backbone have that network as their final classifier already
    frozen = _cfg(tmp_path, "export.finetune_teacher=static", "export.finetune_init=static")
    with pytest.raises(RunError, match="finetune_teacher=static with export.finetune_init=static"):
        ft.finetune_export(parent, frozen)


@pytest.mark.slow
def test_exit_weight_zero_trains_the_backbone_and_leaves_the_exits_alone(exported, tmp_path: Path) -> None:
    """The no-exit control: the final classifier's loss alone moves the weights, so the exit heads
    change by weight decay only while the backbone trains on."""
    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_epochs=1", "export.finetune_exit_weight=0", "export.onnx=false",
               "export.torchscript=false")
    parent = _copy(parent, run)
    out = ft.finetune_export(parent, run)
    assert out.name == f"{parent.name}-ft1-w0"
    before, after = load_exported(parent).static_net(), load_exported(out).static_net()
    for h0, h1 in zip(before.heads, after.heads, strict=True):
        for (k, v0), v1 in zip(h0.named_parameters(), h1.parameters(), strict=True):  # (BN statistics follow)
            assert torch.allclose(v0, v1, rtol=1e-3, atol=1e-6), k
    moved = [not torch.equal(a, b) for a, b in zip(before.backbone_modules()[-1].state_dict().values(),
                                                    after.backbone_modules()[-1].state_dict().values())]
    assert any(moved)


def test_backbone_grad_is_set_while_training_and_named_and_the_export_runs_at_one(exported, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_epochs=1", "exits.backbone_grad=0.25", "export.onnx=false",
               "export.torchscript=false")
    parent = _copy(parent, run)
    seen = _record_member_loss(monkeypatch, lambda net, *_: net.backbone_grad)
    out = ft.finetune_export(parent, run)
    assert out.name == f"{parent.name}-ft1-g0.25" and seen and set(seen) == {0.25}
    info = json.loads((out / "arch.json").read_text())["finetune"]
    assert info["backbone_grad"] == 0.25 and info["exit_weight"] == 1.0
    assert load_exported(out).static_net().backbone_grad == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [True, False])
def test_finetune_trains_in_the_configured_memory_format_and_exports_as_any_other(
        exported, tmp_path: Path, monkeypatch, channels_last: bool) -> None:
    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_epochs=1", f"export.onnx={channels_last}")
    parent = _copy(parent, run)
    # the training settings are the export's own (its run's config), so the format is set there
    m = json.loads((parent / "arch.json").read_text())
    m["config"]["train"]["channels_last"] = channels_last
    (parent / "arch.json").write_text(json.dumps(m))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    seen = _record_member_loss(monkeypatch, lambda net, arch, x, *_: (
        x.is_contiguous(memory_format=fmt),
        all(p.is_contiguous(memory_format=fmt) for p in net.parameters() if p.dim() == 4)))
    out = ft.finetune_export(parent, run)
    # every batch and every conv weight trains in the configured format (channels_last: ~1.6x a step on CPU)
    assert seen and set(seen) == {(True, True)}
    # a channels_last network exports as any other: ONNX agrees with torch, TorchScript loads
    checks = json.loads((out / "arch.json").read_text())["checks"]
    assert checks["safetensors_max_abs_diff"] < 1e-5 and checks["torchscript_max_abs_diff"] < 1e-4
    assert not channels_last or checks["onnx_max_abs_diff"] < 1e-4


def test_exit_weight_scales_the_exit_losses_and_names_the_export(exported, tmp_path: Path, monkeypatch) -> None:
    cfg, parent = _two_exit_export(exported)
    run = _cfg(tmp_path, "export.finetune_init=scratch", "export.finetune_epochs=1", "export.finetune_exit_weight=0.3",
               "export.onnx=false", "export.torchscript=false")
    parent = _copy(parent, run)
    calls = _skip_training(monkeypatch)
    out = ft.finetune_export(parent, run)
    [seen] = calls
    assert out.name == f"{parent.name}-scratch1-w0.3" and seen["ckpt"] == out.with_name(out.name + ".pt")
    assert seen["src"].exits.w_ce == pytest.approx(0.3 * run.exits.w_ce)
    assert seen["src"].exits.w_distill == pytest.approx(0.3 * run.exits.w_distill)
    assert json.loads((out / "arch.json").read_text())["finetune"]["exit_weight"] == 0.3
    # the default keeps the supernet's member loss and the plain name
    assert ft.with_exit_weight(run, 1.0) is run and ft.finetuned_name("x", 1, "scratch") == "x-scratch1"
    # a no-exit control under the learned criterion: its own exit terms go too, or the exits still train
    learned = _cfg(tmp_path, "exits.criterion=learned")
    control = ft.with_exit_weight(learned, 0.0).exits
    assert all(getattr(control, k) == 0.0 for k in ("w_ce", "w_distill", *ft.LEARNED_EXIT_TERMS))
    assert all(getattr(ft.with_exit_weight(run, 0.0).exits, k) == getattr(run.exits, k) for k in ft.LEARNED_EXIT_TERMS)


@pytest.mark.parametrize("init", ["scratch", "inherited"])
def test_supernet_only_keys_leave_finished_runs_fingerprints_alone(init: str) -> None:
    from eval.baselines import _fingerprint as baseline_fingerprint
    from nachos.config import SUPERNET_ONLY_TRAIN_KEYS, load_config
    from supernet.space import SearchSpace

    def load(*overrides: str):
        return load_config(ROOT / "configs" / "tiny.yaml", list(overrides), device_type="cpu")

    base = load()
    supernet_only = load("train.kernel_transform=true", "train.member_label_weight=0.5")
    recipe = load("train.label_smoothing=0.2")
    assert set(SUPERNET_ONLY_TRAIN_KEYS) == {"kernel_transform", "member_label_weight"}
    manifest = {"description": {"arch": "a"}, "files": {"w": "h"}, "weights": "w", "thresholds": [0.9]}
    arch = SearchSpace.from_config(base.space).largest()
    for fingerprint in (lambda c: ft._fingerprint(manifest, c, init, 3, 0.1, 0.0),
                        lambda c: baseline_fingerprint(c, arch, 3)):
        assert fingerprint(supernet_only) == fingerprint(base) != fingerprint(recipe)
