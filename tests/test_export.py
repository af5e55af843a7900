"""Export and evaluation: early-exit semantics, parity of the three forms (PyTorch, TorchScript,
ONNX runner), parity with the search's figures, solution selection, bad inputs, damaged files."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.export import (Exporter, load_exported, load_search_result, load_torchscript, run_early_exit,
                         run_export, select_solutions)
from eval.onnx_runner import MANIFEST, OnnxEarlyExitRunner
from eval.runtime import EarlyExitModel, _confidence, script_model
from exits.policies import CRITERIA, class_logits, decide_exits, exit_confidence
from nachos.config import config_to_dict, load_config
from nachos.runtime import RunError, atomic_torch_save
from supernet.network import create_supernet
from supernet.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/tiny.yaml"


def _cfg(out: Path, *extra: str):
    return load_config(ROOT / TINY, [f"out_dir={out}", "wandb.mode=disabled", "device=cpu",
                                     f"data.cache_dir={ROOT / 'data' / 'cache'}", "data.train_subset=512",
                                     "data.val_subset=300", "search.bn_calib_batches=2", "search.threshold_min=0.1",
                                     "search.threshold_max=0.6", "search.threshold_steps=11",
                                     "search.min_accuracy=0.0", "search.max_expected_macs=5e6",
                                     "export.test_subset=400", "export.latency_images=8", "export.latency_warmup=2",
                                     *extra], device_type="cpu")


def _spread_heads(model: torch.nn.Module, std: float = 0.5) -> None:
    # untrained classifiers start near-uniform (every confidence ~ 1/C): spread them so that
    # thresholds split the samples between exits
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=std)


def _split_thresholds(conf: torch.Tensor, criterion: str, shares: list[float]) -> list[float]:
    """Thresholds letting about ``shares[i]`` of the samples still running leave at exit i."""
    from exits.policies import exit_scores

    scores = exit_scores(conf, criterion)
    alive = torch.ones(conf.shape[1], dtype=torch.bool)
    out = []
    for i, share in enumerate(shares):
        t = float(torch.quantile(scores[i][alive], 1.0 - share))
        out.append(t)
        alive &= scores[i] < t
    return out


# ----------------------------------------------------------------------------- runtime semantics
@pytest.mark.parametrize("criterion", CRITERIA)
def test_confidence_twin_matches_policies(criterion: str) -> None:
    logits = torch.randn(64, 11) * 3
    assert torch.equal(_confidence(logits, criterion), exit_confidence(logits, criterion))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_early_exit_batch_equals_all_exits_and_decide_exits(tmp_path: Path, criterion: str) -> None:
    cfg = _cfg(tmp_path, f"exits.criterion={criterion}")
    torch.manual_seed(3)
    sup = create_supernet(cfg)
    _spread_heads(sup)
    space = sup.space
    arch = space.largest()
    net = sup.extract(arch, space.available_exits(arch)).eval()
    x = torch.randn(96, 3, 32, 32)
    with torch.no_grad():
        outs = net(x)
    conf = torch.stack([exit_confidence(o, criterion) for o in outs[:-1]])
    thr = _split_thresholds(conf, criterion, [0.4, 0.5])
    model = EarlyExitModel(net, thr, criterion).eval()
    seen: list[int] = []
    hook = model.segments[-1].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
    with torch.no_grad():
        pred, ex, logits = model(x)
    hook.remove()
    ref = decide_exits(conf, thr, criterion)
    counts = torch.bincount(ref, minlength=3)
    assert (counts > 0).all(), f"thresholds should spread the samples over every exit: {counts.tolist()}"
    assert torch.equal(ex, ref)
    ref_logits = torch.stack([class_logits(o, criterion if i < len(outs) - 1 else "softmax")
                              for i, o in enumerate(outs)])[ref, torch.arange(len(x))]
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert torch.equal(pred, ref_logits.argmax(1))
    # the saving is real: the last segment only ran on the samples that did not leave
    assert seen == [int(counts[-1])]


def test_all_samples_leaving_early_skip_later_segments() -> None:
    cfg = _cfg(Path("/nonexistent"))
    torch.manual_seed(0)
    sup = create_supernet(cfg)
    arch = sup.space.smallest()
    net = sup.extract(arch, [0]).eval()
    model = EarlyExitModel(net, [0.0], "softmax").eval()  # everybody leaves at exit 0
    calls: list[int] = []
    model.segments[1].register_forward_pre_hook(lambda m, inp: calls.append(1))
    with torch.no_grad():
        pred, ex, _ = model(torch.randn(5, 3, 32, 32))
    assert calls == [] and ex.tolist() == [0] * 5
    never = EarlyExitModel(net, [1.0], "softmax").eval()  # a threshold of 1 disables the exit
    with torch.no_grad():
        assert never(torch.randn(5, 3, 32, 32))[1].tolist() == [1] * 5


def test_bad_inputs_are_rejected_with_the_expected_shape() -> None:
    cfg = _cfg(Path("/nonexistent"))
    sup = create_supernet(cfg)
    net = sup.extract(sup.space.smallest(), [0]).eval()
    model = EarlyExitModel(net, [0.5], "softmax").eval()
    expected = "expected a float tensor of shape (N, 3, 32, 32)"
    with pytest.raises(ValueError) as err:
        model(torch.zeros(2, 1, 28, 28))
    assert str(err.value) == f"{expected}, got (N, 1, 28, 28)"
    with pytest.raises(ValueError, match=r"got uint8 of shape \(N, 3, 32, 32\)"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got \(3, 32, 32\) \(a single image needs a batch axis"):
        model(torch.zeros(3, 32, 32))
    scripted = script_model(model)
    with pytest.raises(Exception, match=r"expected a float tensor of shape \(N, 3, 32, 32\), got shape "
                                        r"\(2, 1, 28, 28\)"):
        scripted(torch.zeros(2, 1, 28, 28))
    with pytest.raises(Exception, match="non-float dtype"):
        scripted(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("criterion", ["entropy", "learned"])
def test_three_forms_agree_for_every_criterion(tmp_path: Path, criterion: str) -> None:
    """write_export of a bare model (no search): TorchScript and ONNX runner take the PyTorch
    model's decisions, including the learned criterion's confidence column and cumulative rule."""
    from eval.export import write_export

    cfg = _cfg(tmp_path, f"exits.criterion={criterion}", "exits.head=nachos")
    torch.manual_seed(5)
    sup = create_supernet(cfg)
    _spread_heads(sup)
    arch = sup.space.largest()
    net = sup.extract(arch, [0, 1]).eval()
    x = torch.randn(80, 3, 32, 32)
    with torch.no_grad():
        conf = torch.stack([exit_confidence(o, criterion) for o in net(x)[:-1]])
    thr = _split_thresholds(conf, criterion, [0.4, 0.5])
    model = EarlyExitModel(net, thr, criterion).eval()
    manifest = {"description": net.description(), "thresholds": thr, "criterion": criterion, "num_classes": 10,
                "input": {"shape": [3, 32, 32], "mean": [0.0] * 3, "std": [1.0] * 3}}
    folder = write_export(tmp_path / "bare", model, manifest, torchscript=True, onnx=True, opset=17, check_x=x)
    with torch.no_grad():
        pred, ex, logits = model(x)
    assert torch.equal(torch.bincount(ex, minlength=3) > 0, torch.tensor([True, True, True]))
    ts_pred, ts_ex, _ = load_torchscript(folder)(x)
    assert torch.equal(ts_ex, ex) and torch.equal(ts_pred, pred)
    o_pred, o_ex, o_logits = OnnxEarlyExitRunner(folder).predict(x.numpy())
    assert np.array_equal(o_ex, ex.numpy()) and np.array_equal(o_pred, pred.numpy())
    assert o_logits.shape == (80, 10) and np.abs(o_logits - logits.numpy()).max() < 1e-4
    checks = json.loads((folder / "arch.json").read_text())["checks"]
    assert checks["onnx_same_exits"] == 1.0 and checks["torchscript_same_exits"] == 1.0


def _bare_model(cfg) -> EarlyExitModel:
    sup = create_supernet(cfg)
    net = sup.extract(sup.space.smallest(), [0]).eval()
    return EarlyExitModel(net, [0.5], "softmax").eval()


def _bare_manifest(model: EarlyExitModel) -> dict:
    return {"description": model.description(), "thresholds": [0.5], "criterion": "softmax", "num_classes": 10,
            "input": {"shape": [3, 32, 32], "mean": [0.0] * 3, "std": [1.0] * 3}}


def _dead_pid() -> int:
    """The pid of a process that has ended (what an export killed outright leaves in its folder names)."""
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()
    return finished.pid


def test_an_export_killed_midway_leaves_nothing_that_passes_for_an_export(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    import eval.export as export_module
    from eval.evaluate import resolve_export_dirs
    from eval.export import export_root, write_export

    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    model, x = _bare_model(cfg), torch.randn(8, 3, 32, 32)
    manifest = _bare_manifest(model)
    good = write_export(export_root(cfg) / "good", model, manifest, torchscript=False, onnx=False, opset=17,
                        check_x=x)
    assert "WARNING" not in capsys.readouterr().err  # the forms agree: no warning

    def killed(*args, **kwargs):
        raise RuntimeError("killed")  # with cleanup disabled below: what SIGKILL leaves after arch.json

    monkeypatch.setattr(export_module, "parity_checks", killed)
    monkeypatch.setattr(export_module.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="killed"):
        write_export(export_root(cfg) / "bad", model, manifest, torchscript=False, onnx=False, opset=17, check_x=x)
    monkeypatch.undo()
    assert any(p.name == MANIFEST for p in export_root(cfg).rglob("*") if "bad" in str(p.parent))  # left behind
    assert resolve_export_dirs(cfg, None) == [good]  # eval and the index (same rule)
    assert [p.parent for p in export_root(cfg).glob(f"*/{MANIFEST}")] == [good]  # the report and the archive


def test_the_next_export_sweeps_what_killed_exports_left_and_restores_one_killed_mid_swap(tmp_path: Path) -> None:
    from eval.evaluate import resolve_export_dirs
    from eval.export import export_root, write_export

    cfg = _cfg(tmp_path)
    model = _bare_model(cfg)
    manifest = _bare_manifest(model)
    root = export_root(cfg)
    a = write_export(root / "a", model, manifest, torchscript=False, onnx=False, opset=17)
    dead, live = _dead_pid(), os.getppid()
    staging = root / ".staging"
    # SIGKILLed between replace_dir's renames: the old copy aside, the new one complete, the export gone
    shutil.copytree(a, staging / f"a-{dead}")
    newer = json.loads((staging / f"a-{dead}" / MANIFEST).read_text())
    (staging / f"a-{dead}" / MANIFEST).write_text(json.dumps(dict(newer, thresholds=[0.7])))
    os.replace(a, staging / f"a-{dead}.old")
    (staging / f"b-{dead}").mkdir()  # SIGKILLed mid-write
    (staging / f"c-{live}").mkdir()  # another job exporting now
    (staging / f"z-{dead}.old").write_text("")  # no folder of ours: not put back as an export
    (staging / f"y-{'9' * 30}").mkdir()  # digits that are no pid
    assert not (a / MANIFEST).exists()
    d = write_export(root / "d", model, manifest, torchscript=False, onnx=False, opset=17)
    assert resolve_export_dirs(cfg, None) == [a, d]
    assert load_exported(a).thresholds.tolist() == [0.5]  # the old copy, as replace_dir puts back on Ctrl-C
    assert sorted(p.name for p in staging.iterdir()) == sorted([f"c-{live}", f"y-{'9' * 30}", f"z-{dead}.old"])
    assert not (root / "z").exists()


def test_two_exports_sweeping_one_killed_swap_at_once_do_not_fail(tmp_path: Path, monkeypatch) -> None:
    import eval.export as export_module

    staging = tmp_path / ".staging"
    (staging / f"a-{_dead_pid()}.old").mkdir(parents=True)
    real = os.replace

    def the_other_was_first(src, dst):
        real(src, dst)  # the other export puts it back between our check and our rename
        raise FileNotFoundError(src)

    monkeypatch.setattr(export_module.os, "replace", the_other_was_first)
    export_module.sweep_staging(staging)
    assert (tmp_path / "a").is_dir() and not any(staging.iterdir())


def test_a_form_that_disagrees_with_the_model_is_reported(tmp_path: Path, monkeypatch, capsys) -> None:
    import eval.export as export_module
    from eval.export import export_root, write_export

    cfg = _cfg(tmp_path)
    model = _bare_model(cfg)
    manifest = _bare_manifest(model)
    monkeypatch.setattr(export_module, "parity_checks", lambda *a: {"images": 8, "onnx_max_abs_diff": 0.2,
                                                                    "onnx_same_exits": 0.875,
                                                                    "torchscript_max_abs_diff": 1e-7,
                                                                    "torchscript_same_exits": 1.0})
    write_export(export_root(cfg) / "x", model, manifest, torchscript=False, onnx=False, opset=17,
                 check_x=torch.randn(8, 3, 32, 32))
    err = capsys.readouterr().err
    assert "WARNING: x:" in err and "onnx_max_abs_diff = 0.2" in err and "onnx_same_exits = 0.8750" in err
    assert "torchscript" not in err


# ----------------------------------------------------------------------------- selection
def _rec(i: int, acc: float, macs: float) -> dict:
    return {"id": i, "algorithm": "nsga2", "accuracy": acc, "expected_macs": macs}


def test_selection_rules(tmp_path: Path) -> None:
    front = [_rec(10, 0.70, 1.0e6), _rec(11, 0.80, 2.0e6), _rec(12, 0.85, 2.6e6), _rec(13, 0.90, 3.5e6)]
    assert [i for i, _ in select_solutions(front, "best")] == [3]
    assert [i for i, _ in select_solutions(front, "all")] == [0, 1, 2, 3]
    assert [i for i, _ in select_solutions(front, "2")] == [2]
    assert [i for i, _ in select_solutions(front, "-1")] == [3]
    assert [i for i, _ in select_solutions(front, "acc>=0.8")] == [1]  # cheapest reaching 0.8
    assert [i for i, _ in select_solutions(front, "acc >= 84")] == [2]  # percent
    assert [i for i, _ in select_solutions(front, "macs<=2.7e6")] == [2]  # most accurate within budget
    with pytest.raises(RunError, match="indices 0..3"):
        select_solutions(front, "4")
    with pytest.raises(RunError, match="no admissible solution reaches validation accuracy 0.95"):
        select_solutions(front, "acc>=0.95")
    with pytest.raises(RunError, match="cheapest has 1e"):
        select_solutions(front, "macs<=5e5")
    with pytest.raises(RunError, match="not understood"):
        select_solutions(front, "fastest")
    with pytest.raises(RunError, match="nothing to export"):
        select_solutions([], "best")
    cfg = _cfg(tmp_path)
    with pytest.raises(RunError, match=r"no search result at .*pareto.json; run the search first: "
                                       r"make search CONFIG=configs/tiny.yaml"):
        load_search_result(cfg, TINY)


# ----------------------------------------------------------------------------- export end to end
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight tiny supernet checkpoint, a small search result scored by the search's own
    code, and the export of two of its solutions."""
    from search.backend import SupernetBackend
    from search.evaluate import Archive, CandidateEvaluator
    from search.genome import Genome, GenomeCodec
    from search.report import write_front
    from search.scoring import threshold_grid

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("export")
    cfg = _cfg(out)
    torch.manual_seed(0)
    sup = create_supernet(cfg)
    _spread_heads(sup, 0.3)
    space = SearchSpace.from_config(cfg.space)
    atomic_torch_save({"model": sup.state_dict(), "config": config_to_dict(cfg), "space_hash": space.space_hash()},
                      cfg.run_dir / "best.pt")
    backend = SupernetBackend(cfg, TINY)
    evaluator = CandidateEvaluator(GenomeCodec(space, cfg.search.threshold_steps), backend, cfg.search,
                                   cfg.exits.criterion)
    grid = threshold_grid(cfg.search.threshold_min, cfg.search.threshold_max, cfg.search.threshold_steps)
    archive = Archive("nsga2")
    for arch, exits in ((space.largest(), (0, 1)), (space.smallest(), (1,))):
        cache = evaluator.cache(arch)
        conf = torch.from_numpy(cache.conf[list(exits)])
        thr = _split_thresholds(conf, cfg.exits.criterion, [0.4, 0.5][: len(exits)])
        idx = tuple(int(np.argmin(np.abs(grid - t))) for t in thr)
        archive.add(evaluator.record(Genome(arch, exits, idx), "test", 0))
    front = sorted(archive.records, key=lambda r: r["expected_macs"])
    write_front(cfg.run_dir / "search", {"algorithm": "nsga2", "metric": "macs", "cost_key": "expected_macs",
                                         "front": front, "message": "", "closest": []})
    folders = run_export(cfg, TINY, select="all")
    return cfg, front, folders


def _test_loader(cfg, folder: Path):
    """The test images ``nachos eval`` runs an export on, in its order."""
    from eval.evaluate import test_order
    from nachos.data import load_splits, make_loader

    m = json.loads((folder / "arch.json").read_text())
    s = load_splits(cfg)
    order = test_order(s.test_y, s.num_classes, cfg.export.test_subset, cfg.seed)
    return make_loader(cfg, s.test_x[order], s.test_y[order], "cpu", train=False, seed=cfg.seed,
                       mean=m["input"]["mean"], std=m["input"]["std"])


def _val_images(cfg, n: int = 64) -> torch.Tensor:
    from nachos.data import load_splits, make_loader

    s = load_splits(cfg)
    pick = torch.randperm(len(s.val_y), generator=torch.Generator().manual_seed(0))[:n]  # splits are class-sorted
    loader = make_loader(cfg, s.val_x[pick], s.val_y[pick], "cpu", train=False, seed=0, mean=s.mean, std=s.std)
    return torch.cat([x for x, _ in loader])


def _val_uint8(cfg, n: int) -> torch.Tensor:
    from nachos.data import load_splits

    s = load_splits(cfg)
    return s.val_x[torch.randperm(len(s.val_y), generator=torch.Generator().manual_seed(0))[:n]]


@pytest.mark.slow
def test_export_folder_and_manifest(exported) -> None:
    cfg, front, folders = exported
    assert len(folders) == 2 and all(f.parent == cfg.run_dir / "export" for f in folders)
    for folder, rec in zip(folders, front):
        m = json.loads((folder / "arch.json").read_text())
        assert m["arch"] == rec["arch"] and m["exits"] == rec["exits"] and m["criterion"] == "softmax"
        assert m["thresholds"] == pytest.approx(rec["thresholds"], abs=1e-6)
        assert m["peak_macs"] == rec["peak_macs"] and m["params"] == rec["params"]
        assert m["macs"]["exit_costs"] == m["macs"]["profiled_exit_costs"]  # table == ptflops on the export
        assert "every selected head up to and including" in m["macs"]["convention"]
        assert m["source"]["candidate_id"] == rec["id"] and len(m["source"]["config_hash"]) == 16
        assert m["description"]["exit_ids"] == rec["exits"]
        for name in ["model.safetensors", "model.torchscript.pt", *m["onnx"]["segments"], *m["onnx"]["heads"]]:
            assert (folder / name).is_file() and name in m["files"]
        assert len(m["onnx"]["segments"]) == len(rec["exits"]) + 1
        checks = m["checks"]
        assert checks["onnx_max_abs_diff"] < 1e-4 and checks["onnx_same_exits"] == 1.0
        assert checks["torchscript_same_exits"] == 1.0
    assert json.loads((cfg.run_dir / "export" / "index.json").read_text())[0]["id"] in {f.name for f in folders}


@pytest.mark.slow
def test_exported_validation_figures_equal_the_search(exported) -> None:
    """The exported model, run on the validation split, reproduces the search's record of the same
    genome (scored by search's own code): same per-sample exits, accuracy and expected MACs."""
    from nachos.data import load_splits, make_loader

    cfg, front, folders = exported
    s = load_splits(cfg)
    loader = make_loader(cfg, s.val_x, s.val_y, "cpu", train=False, seed=0, mean=s.mean, std=s.std)
    for folder, rec in zip(folders, front):
        m = json.loads((folder / "arch.json").read_text())
        model = load_exported(folder)
        pred, ex, _, labels = run_early_exit(model, loader)
        counts = np.bincount(ex, minlength=len(rec["exits"]) + 1)
        assert counts.tolist() == rec["exit_counts"]
        assert (counts[:-1] > 0).any()  # something does leave early
        assert float((pred == labels).mean()) == pytest.approx(rec["accuracy"], abs=1e-12)
        measured = float(counts @ np.asarray(m["macs"]["exit_costs"]) / len(labels))
        assert measured == pytest.approx(rec["expected_macs"], rel=1e-12)
        assert m["expected_macs"] == pytest.approx(rec["expected_macs"], rel=1e-12)
        assert m["validation"]["same_exits_as_search"] == 1.0


@pytest.mark.slow
def test_static_supernet_and_exported_forms_agree(exported) -> None:
    cfg, front, folders = exported
    x = _val_images(cfg)
    exporter = Exporter(cfg, TINY)
    for folder, rec in zip(folders, front):
        model, _, _ = exporter.build(rec)  # same recalibration as the export: deterministic
        sup = exporter.backend.model.eval()
        with torch.no_grad():
            sup_outs = sup(x)
            static_outs = model.static_net()(x)
            ref_pred, ref_exit, ref_logits = model(x)
        # static module == the supernet's active output at the selected exits and the final
        for o, pos in zip(static_outs, [*rec["exits"], -1]):
            assert torch.allclose(o, sup_outs[pos], atol=1e-5)
        # safetensors -> load_exported == the static module, bit for bit
        loaded = load_exported(folder)
        assert torch.allclose(loaded.normalize(_val_uint8(cfg, 4)), x[:4], atol=1e-5)
        with torch.no_grad():
            for a, b in zip(loaded.run_all(x), static_outs):
                assert torch.equal(a, b)
            assert torch.equal(loaded(x)[1], ref_exit)
        # TorchScript: same outputs and exit decisions, from its own forward
        ts = load_torchscript(folder)
        pred, ex, logits = ts(x)
        assert torch.equal(ex, ref_exit) and torch.equal(pred, ref_pred)
        assert torch.allclose(logits, ref_logits, atol=1e-6)
        assert (ref_exit < len(rec["exits"])).any() and (ref_exit == len(rec["exits"])).any()
        # ONNX runner: within 1e-4 at every exit, same decisions
        runner = OnnxEarlyExitRunner(folder)
        for a, b in zip(runner.run_all(x.numpy()), static_outs):
            assert np.abs(a - b.numpy()).max() < 1e-4
        pred, ex, logits = runner.predict(x.numpy())
        assert np.array_equal(ex, ref_exit.numpy()) and np.array_equal(pred, ref_pred.numpy())
        assert np.abs(logits - ref_logits.numpy()).max() < 1e-4
        with pytest.raises(ValueError, match=r"expected a float tensor of shape \(N, 3, 32, 32\), "
                                             r"got \(N, 1, 28, 28\)"):
            runner.predict(np.zeros((2, 1, 28, 28), np.float32))


def test_the_weights_file_is_a_function_of_the_weights_alone() -> None:
    """Its digest goes into arch.json and fine-tuning fingerprints: re-exporting the same network must
    give the same bytes (a metadata map written in hash order did not, one time in two)."""
    from eval.export import _state_bytes

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert len({hashlib.sha256(_state_bytes(net)).hexdigest() for _ in range(16)}) == 1


@pytest.mark.slow
def test_damaged_or_missing_export_files_are_named(exported, tmp_path: Path) -> None:
    _, _, folders = exported
    copy = tmp_path / "copy"
    shutil.copytree(folders[0], copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still parses, wrong weights
    weights.write_bytes(bytes(data))
    with pytest.raises(RunError, match=rf"export file {weights} is damaged"):
        load_exported(copy)
    weights.write_bytes(bytes(data[:100]))
    with pytest.raises(RunError, match=rf"{weights}"):
        load_exported(copy)
    shutil.copy(folders[0] / "model.safetensors", weights)
    assert load_exported(copy) is not None
    (copy / "model.torchscript.pt").write_bytes(b"not a zip")
    with pytest.raises(RunError, match=rf"export file {copy / 'model.torchscript.pt'} is damaged"):
        load_torchscript(copy)
    (copy / "onnx" / "head_0.onnx").unlink()
    with pytest.raises(RunError, match=rf"export file {copy / 'onnx' / 'head_0.onnx'} is missing"):
        OnnxEarlyExitRunner(copy)
    (copy / "arch.json").write_text("{not json")
    with pytest.raises(RunError, match=rf"export file {copy / 'arch.json'} is damaged"):
        load_exported(copy)
    (copy / "arch.json").unlink()
    with pytest.raises(RunError, match=rf"{copy / 'arch.json'} is missing"):
        load_exported(copy)


@pytest.mark.slow
def test_eval_on_the_test_split_writes_reports(exported) -> None:
    from eval.evaluate import eval_command, resolve_export_dirs

    cfg, front, folders = exported
    assert resolve_export_dirs(cfg, None) == sorted(folders)
    eval_command(cfg, argparse.Namespace(export_dirs=[str(folders[1])], config=TINY))
    folder = folders[1]
    r = json.loads((folder / "eval.json").read_text())
    assert r["split"] == "test" and r["images"] == 400
    from eval.evaluate import test_order
    from nachos.data import load_splits
    s = load_splits(cfg)  # which images, so the report sets it only against baselines scored on these
    assert r["test_digest"] == s.test_digest(test_order(s.test_y, s.num_classes, 400, cfg.seed))
    assert sum(r["exit_counts"]) == 400 and sum(r["exit_rates"]) == pytest.approx(1.0)
    assert r["expected_macs"] == pytest.approx(np.dot(r["exit_counts"], r["exit_costs"]) / 400)
    assert r["same_exits_as_all_exits_rule"] == 1.0 and r["same_predictions_as_all_exits_rule"] == 1.0
    assert 0.0 <= r["ece"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
    lat = r["latency"]
    assert lat["images"] == 8 and lat["pytorch"]["early_exit"]["median_ms"] > 0
    assert {"torchscript", "onnx"} <= set(lat)
    assert (folder / "eval.md").read_text().startswith(f"# Evaluation of `{folder.name}`")
    assert (folder / "eval.png").stat().st_size > 10_000
    # the operating point: thresholds chosen on validation, then run for real on the test split
    op = r["operating_point"]
    assert op["val"]["accuracy"] >= op["val"]["final_classifier_accuracy"] - cfg.export.max_accuracy_drop
    model, m = load_exported(folder), json.loads((folder / "arch.json").read_text())
    tuned = EarlyExitModel(model.static_net(), op["thresholds"], model.criterion, m["input"]["mean"],
                           m["input"]["std"]).eval()
    pred, ex, _, labels = run_early_exit(tuned, _test_loader(cfg, folder))
    counts = np.bincount(ex, minlength=len(r["exit_costs"]))
    assert op["test"]["accuracy"] == pytest.approx(float((pred == labels).mean()), abs=1e-12)
    assert op["test"]["expected_macs"] == pytest.approx(counts @ np.asarray(r["exit_costs"]) / len(labels))
    assert op["test"]["final_classifier_accuracy"] == pytest.approx(r["exit_accuracy_all_samples"][-1])
    # the trade-off curve: per budget the most accurate thresholds on validation, then run on test
    curve = r["tradeoff"]
    assert len(curve) >= 2 and [p["budget"] for p in curve] == sorted(p["budget"] for p in curve)
    assert all(p["val"]["expected_macs"] <= p["budget"] * (1 + 1e-9) for p in curve[1:])
    assert curve[-1]["val"]["accuracy"] >= m["validation"]["accuracy"] - 1e-12  # own thresholds fit the peak budget
    last = EarlyExitModel(model.static_net(), curve[-1]["thresholds"], model.criterion, m["input"]["mean"],
                          m["input"]["std"]).eval()
    pred, _, _, labels = run_early_exit(last, _test_loader(cfg, folder))
    assert curve[-1]["test"]["accuracy"] == pytest.approx(float((pred == labels).mean()), abs=1e-12)


def _noisy_cache(n: int = 400, seed: int = 0):
    """Two exits whose accuracy falls with confidence slowly, so that many cheap thresholds sit
    near the drop budget on validation by chance."""
    from search.scoring import BackboneCache

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    conf = rng.random((3, n)).astype(np.float32)
    conf[-1] = 1.0
    right = rng.random((3, n)) < np.array([[0.6], [0.75], [0.85]]) + 0.15 * conf
    pred = np.where(right, labels, (labels + 1) % 10).astype(np.int16)
    return BackboneCache("noisy", pred, conf, labels)


def test_operating_point_holds_the_drop_for_a_paired_lower_bound() -> None:
    from eval.evaluate import discordance_scorer, operating_point, threshold_scorer
    from exits.policies import decide_exits_np

    grid, costs = np.round(np.linspace(0.0, 1.0, 21), 6), np.array([1.0, 2.0, 3.0])
    for seed in range(3):
        val, test = _noisy_cache(seed=seed), _noisy_cache(seed=seed + 10)
        sc = threshold_scorer(val, grid, "softmax", costs)
        dc = discordance_scorer(val, grid, "softmax", costs)
        final = float(val.correct[-1].mean())
        args = (sc, final, test.pred, test.conf[:-1], test.labels, "softmax", costs, 3.0, 0.02)
        plain = operating_point(*args)
        for z in (1.0, 1.645, 2.33):
            op = operating_point(*args, z=z, discordance=dc)
            # the bound, recomputed image by image from the chosen thresholds
            taken = decide_exits_np(val.conf[:-1], np.asarray(op["thresholds"]), "softmax")
            d = val.correct[taken, np.arange(val.num_samples)].astype(float) - val.correct[-1]
            bound = d.mean() - z * d.std() / np.sqrt(len(d))
            assert op["val"]["lower_bound_of_difference"] == pytest.approx(bound, abs=1e-9)
            assert bound >= -0.02 - 1e-12 and op["val"]["accuracy"] == pytest.approx(final + d.mean())
            assert op["val"]["expected_macs"] >= plain["val"]["expected_macs"] - 1e-9  # a margin costs MACs
        assert plain["val"]["lower_bound_of_difference"] < -0.02 + 0.005  # z = 0: the mean alone, near the budget
    # exits wrong wherever the final classifier is right: with a wide bound no exit may take an
    # image, so every image goes to the final classifier
    val.pred[:2] = np.where(val.correct[-1], (val.labels + 1) % 10, val.labels)
    val._correct = None
    sc, dc = threshold_scorer(val, grid, "softmax", costs), discordance_scorer(val, grid, "softmax", costs)
    args = (sc, final, *args[2:-1], 0.05)
    op = operating_point(*args, z=50.0, discordance=dc)
    assert op["thresholds"] == [1.0, 1.0] and op["val"]["expected_macs"] == 3.0
    assert op["val"]["accuracy"] == pytest.approx(final) and op["test"]["exit_rates"] == [0.0, 0.0, 1.0]
    assert operating_point(*args)["val"]["expected_macs"] < 3.0  # the mean alone lets some out


@pytest.mark.slow
def test_hand_designed_network_gets_the_cheapest_exits_within_the_drop(exported, tmp_path: Path) -> None:
    from eval.baselines import hand_designed_arch
    from search.backend import SupernetBackend
    from supernet.space import Arch

    cfg0, _, _ = exported
    cfg = _cfg(tmp_path, "export.max_accuracy_drop=0.02", "export.onnx=false", "export.torchscript=false")
    shutil.copytree(cfg0.run_dir, cfg.run_dir, ignore=shutil.ignore_patterns("export"))
    folder = run_export(cfg, TINY, select="hand")[0]
    m = json.loads((folder / "arch.json").read_text())
    space = SearchSpace.from_config(cfg.space)
    arch = hand_designed_arch(space)
    assert folder.name == "hand-exits" and Arch.from_dict(m["arch"]) == arch
    assert m["source"]["algorithm"] == "hand" and m["source"]["front_index"] is None
    final = float(SupernetBackend(cfg, TINY).prediction_cache(arch).correct[-1].mean())
    assert m["validation"]["accuracy"] >= final - 0.02  # the exported model itself, on validation
    assert m["validation"]["same_exits_as_search"] == 1.0
    assert m["validation"]["expected_macs"] == pytest.approx(m["validation"]["search"]["expected_macs"])
    assert m["validation"]["expected_macs"] <= m["macs"]["backbone"]  # cheaper than no exits, or none chosen
    assert json.loads((cfg.run_dir / "export" / "index.json").read_text())[0]["id"] == "hand-exits"


@pytest.mark.slow
def test_hand_designed_network_with_the_exits_given_needs_no_search(exported, tmp_path: Path) -> None:
    from eval.baselines import hand_designed_arch
    from supernet.space import Arch

    cfg0, _, _ = exported
    space = SearchSpace.from_config(cfg0.space)
    arch = hand_designed_arch(space)
    last = space.available_exits(arch)[-1]
    cfg = _cfg(tmp_path, f"export.hand_exits=[{last}]", "export.onnx=false", "export.torchscript=false")
    shutil.copytree(cfg0.run_dir, cfg.run_dir, ignore=shutil.ignore_patterns("export", "search"))
    with pytest.raises(RunError, match=r"export.hand_exits=\[\d\] applies to export.select=hand only"):
        run_export(cfg, TINY, select="best")
    with pytest.raises(RunError, match="no search result"):  # the front still needs one
        run_export(_cfg(tmp_path), TINY, select="best")
    folder = run_export(cfg, TINY, select="hand")[0]
    m = json.loads((folder / "arch.json").read_text())
    assert folder.name == f"hand-exits-{last}" and m["exits"] == [last] and m["source"]["search"] is None
    assert len(m["thresholds"]) == 1 and m["validation"]["same_exits_as_search"] == 1.0
    bad = _cfg(tmp_path, "export.hand_exits=[99]", "export.onnx=false", "export.torchscript=false")
    with pytest.raises(RunError, match=r"export.hand_exits=\[99\]: the network .* has exit positions"):
        run_export(bad, TINY, select="hand")
    # a network the user names instead of the hand-designed one: same exits rule, its own name
    other = space.largest()
    assert other != arch
    named = _cfg(tmp_path, f"export.hand_exits=[{last}]", f"export.hand_arch='{other}'", "export.onnx=false",
                 "export.torchscript=false")
    with pytest.raises(RunError, match=r"export.hand_arch=.* applies to export.select=hand only"):
        run_export(_cfg(tmp_path, f"export.hand_arch='{other}'"), TINY, select="best")
    folder = run_export(named, TINY, select="hand")[0]
    m = json.loads((folder / "arch.json").read_text())
    assert folder.name == f"arch-{other.key()[:6]}-exits-{last}" and Arch.from_dict(m["arch"]) == other
    assert m["exits"] == [last] and m["source"]["algorithm"] == "hand"
    typo = _cfg(tmp_path, f"export.hand_arch='{str(other).replace('f', 'f9')}'")
    with pytest.raises(RunError, match="export.hand_arch: .*final_width.*not allowed.*copy an arch from a report"):
        run_export(typo, TINY, select="hand")


def test_eval_refuses_an_export_of_other_held_out_images(exported, tmp_path: Path) -> None:
    """The data changed after the export: the operating point, chosen on validation, would count
    images the supernet trained on."""
    from eval.evaluate import evaluate_export

    cfg, front, folders = exported
    copy = tmp_path / folders[0].name
    shutil.copytree(folders[0], copy)
    manifest = json.loads((copy / "arch.json").read_text())
    assert manifest["source"]["held_out_digest"]
    manifest["source"]["held_out_digest"] = "another-folder"
    (copy / "arch.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match=r"not those .* held out.*operating point.*Evaluate with the data"):
        evaluate_export(copy, cfg)
    assert not (copy / "eval.json").exists()


def test_eval_without_exports_names_the_fix(tmp_path: Path) -> None:
    from eval.evaluate import resolve_export_dirs

    cfg = _cfg(tmp_path)
    with pytest.raises(RunError, match=r"no exports in .*export; export solutions of the search first: make export "
                                       r"CONFIG=configs/tiny.yaml"):
        resolve_export_dirs(cfg, None, TINY)
    with pytest.raises(RunError, match=r"no export at .*nowhere"):
        resolve_export_dirs(cfg, str(tmp_path / "nowhere"), TINY)


def test_eval_supernet_scores_the_largest_and_smallest_on_the_test_split(exported) -> None:
    """`nachos eval --supernet`: the figures match an independent pass of the extracted static
    network (BN recalibrated on the same batches) over the same test images."""
    from eval.evaluate import evaluate_supernet, test_order
    from nachos.data import calibration_batches, load_splits, make_loader
    from supernet.bn import recalibrate_bn

    cfg = exported[0]
    res = evaluate_supernet(cfg, TINY)
    assert json.loads((cfg.run_dir / "supernet_test.json").read_text()) == res
    assert res["split"] == "test" and res["images"] == cfg.export.test_subset
    space = SearchSpace.from_config(cfg.space)
    sup = create_supernet(cfg)
    sup.load_state_dict(torch.load(cfg.run_dir / "best.pt", weights_only=False)["model"])
    s = load_splits(cfg)
    calib = calibration_batches(cfg, s.train_x, s.train_y, s.mean, s.std, "cpu", cfg.train.bn_calib_batches)
    order = test_order(s.test_y, s.num_classes, cfg.export.test_subset, cfg.seed)
    for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
        net = sup.extract(arch)
        recalibrate_bn(net, calib, len(calib))
        net.eval()
        loader = make_loader(cfg, s.test_x[order], s.test_y[order], "cpu", train=False, seed=0, mean=s.mean, std=s.std)
        with torch.no_grad():
            hits = sum(int((net(x)[-1].argmax(1) == y).sum()) for x, y in loader)
        assert res[name]["final"] == pytest.approx(hits / len(order), abs=1e-6), name  # one image = 2.5e-3
        assert res[name]["arch"] == arch.to_dict()
    for override in ("exits.head=nachos", "exits.head_max_map=4"):  # same run folder, other exit heads
        # the second loads without a shape error: only the settings check can refuse it
        with pytest.raises(RunError, match="does not fit this config's exit heads .*trained with .*'max_map': 8"):
            evaluate_supernet(_cfg(cfg.out_dir, override), TINY)


def test_an_export_whose_recorded_config_does_not_load_is_refused(tmp_path: Path) -> None:
    from eval.evaluate import source_config

    cfg = _cfg(tmp_path)
    recorded = config_to_dict(cfg)
    assert source_config({"config": recorded}, cfg).seed == cfg.seed
    recorded["train"]["no_such_key"] = 1  # written by another version of nachos
    with pytest.raises(RunError, match="recorded config does not load here .*no_such_key.*export it again"):
        source_config({"config": recorded}, cfg)  # not the given config: its split may differ
