"""Config loading: validation errors name the key, the value and what is allowed; precedence."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nachos.config import Config, ConfigError, describe, load_config, save_config

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO / "configs" / "cifar10.yaml"


def test_every_shipped_config_loads_for_both_devices():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        for device in ("cpu", "cuda"):
            cfg = load_config(path, device_type=device)
            assert isinstance(cfg, Config)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="nosuchkey"):
        load_config(CIFAR, ["nosuchkey=1"], device_type="cpu")
    with pytest.raises(ConfigError, match=r"train\.nosuch"):
        load_config(CIFAR, ["train.nosuch=1"], device_type="cpu")


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochz: 3}\n")
    with pytest.raises(ConfigError, match=r"train\.epochz.*allowed keys: .*epochs"):
        load_config(path, device_type="cpu")


@pytest.mark.parametrize("override, pattern", [
    ("train.lr=abc", r"train\.lr: expected a number, got 'abc'"),
    ("train.epochs=2.5", r"train\.epochs: expected an integer"),
    ("data.augment.hflip=maybe", r"data\.augment\.hflip: expected true or false"),
    ("space.stages=3", r"space\.stages: expected a list"),
])
def test_wrong_type_is_named(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(CIFAR, [override], device_type="cpu")


@pytest.mark.parametrize("override, pattern", [
    ("train.epochs=-1", r"train\.epochs=-1 is out of range; allowed: >= 0"),
    ("data.val_fraction=0.9", r"data\.val_fraction=0\.9 is out of range; allowed: <= 0\.5"),
    ("exits.head=big", r"exits\.head='big' is not allowed; choose one of light, nachos"),
    ("space.stages.0.stride=3", r"space\.stages\[0\]\.stride=3 is not allowed"),
])
def test_out_of_range_is_named(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(CIFAR, [override], device_type="cpu")


def test_precedence_defaults_file_profile_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "train": {"epochs": 10, "lr": 0.2},
        "profiles": {"cpu": {"train.epochs": 3}, "cuda": {"train.epochs": 300}},
    }))
    assert load_config(path, device_type="cuda").train.epochs == 300
    cpu = load_config(path, device_type="cpu")
    assert cpu.train.epochs == 3  # profile beats file
    assert cpu.train.lr == 0.2  # file beats default
    assert cpu.train.momentum == Config().train.momentum  # default kept
    assert load_config(path, ["train.epochs=7"], device_type="cpu").train.epochs == 7  # CLI beats profile


def test_override_values_parse_as_yaml_and_index_lists():
    cfg = load_config(CIFAR, ["space.stages.1.widths=[8, 16]", "search.max_expected_macs=2.7e6",
                              "data.augment.hflip=false", "name=x"], device_type="cpu")
    assert cfg.space.stages[1].widths == [8, 16]
    assert cfg.search.max_expected_macs == 2.7e6
    assert cfg.data.augment.hflip is False
    assert cfg.name == "x"
    assert load_config(CIFAR, ["export.select=3"], device_type="cpu").export.select == "3"
    with pytest.raises(ConfigError, match="not an index"):
        load_config(CIFAR, ["space.stages.99.stride=1"], device_type="cpu")
    with pytest.raises(ConfigError, match="no '='"):
        load_config(CIFAR, ["train.epochs"], device_type="cpu")


def test_saved_config_round_trips(tmp_path):
    # train.epochs and search.max_backbones are keys both profiles set too: the saved file must not apply them again
    cfg = load_config(CIFAR, ["train.lr=0.05", "train.epochs=48", "search.max_backbones=300"], device_type="cpu")
    save_config(cfg, tmp_path / "config.yaml")
    for device in ("cpu", "cuda"):
        again = load_config(tmp_path / "config.yaml", device_type=device)
        assert again == dataclasses.replace(cfg, profiles={}), device
        assert (again.train.epochs, again.search.max_backbones) == (48, 300)


def test_profile_applies_to_the_file_before_the_overrides():
    # the cpu profile narrows space.stages.2-4, which this override leaves out
    cfg = load_config(CIFAR, ["space.stages=[{widths: [16]}, {widths: [24], stride: 2}]"], device_type="cpu")
    assert [s.widths for s in cfg.space.stages] == [[16], [24]]
    assert cfg.train.epochs == 7  # the profile still applies


def test_nested_profile_values_set_only_their_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.2}, "profiles": {"cpu": {"train": {"epochs": 2}}}}))
    cfg = load_config(path, device_type="cpu")
    assert (cfg.train.epochs, cfg.train.lr) == (2, 0.2)


@pytest.mark.parametrize("profiles, pattern", [
    ({"cpu": {"train.epochs": 3}, "cuda": {"train.epochz": 3}}, r"profiles\.cuda: unknown key 'train\.epochz'"),
    ({"cuda": {"train": {"epochz": 3}}}, r"profiles\.cuda: unknown key 'train\.epochz'"),
    ({"cuda": {"train.epochs": -1}}, r"profiles\.cuda: train\.epochs=-1 is out of range"),
    ({"cuda": 3}, r"profiles\.cuda must be a mapping"),
    ({"gpu": {"train.epochs": 3}}, r"profiles\.gpu: .*allowed names: cpu, cuda"),
])
def test_every_profile_is_checked_on_any_device(tmp_path, profiles, pattern):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"profiles": profiles}))
    with pytest.raises(ConfigError, match=pattern):
        load_config(path, device_type="cpu")


@pytest.mark.parametrize("overrides, pattern", [
    (["train.lr=nan"], r"train\.lr: expected a finite number"),
    (["search.min_accuracy=.nan"], r"search\.min_accuracy: expected a finite number"),
    (["train.lr=inf"], r"train\.lr: expected a finite number"),
    (["data.val_fraction=0"], r"data\.val_fraction=0\.0 is out of range; allowed: > 0 .*validation split"),
    (["search.threshold_min=0.9", "search.threshold_max=0.5"], r"search\.threshold_min=0\.9 is not below "
                                                                r"search\.threshold_max=0\.5"),
    (["space.final_widths.0.x=1"], r"bad override key 'space\.final_widths\.0\.x'"),
])
def test_values_no_run_can_use_are_named(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(CIFAR, overrides, device_type="cpu")


def test_an_item_of_a_list_the_file_leaves_out_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x"}))  # space.stages left to the defaults
    with pytest.raises(ConfigError, match=r"'space\.stages\.0\.widths': the config file does not give space\.stages, "
                                          r"so there is no item 0 .*space\.stages=\[\.\.\.\]"):
        load_config(path, ["space.stages.0.widths=[16]"], device_type="cpu")
    # a key that holds one value is named as such, whether the file gives it or not
    for tree in ({"name": "x"}, {"name": "x", "train": {"epochs": 3}}):
        path.write_text(yaml.safe_dump(tree))
        with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer|train\.epochs holds a single"):
            load_config(path, ["train.epochs.0=5"], device_type="cpu")


def test_string_fields_keep_the_text_as_written():
    cfg = load_config(CIFAR, ["name=010", "data.root=1.10", "export.select=0x10", "export.hand_arch='w16[k3e1] f128'",
                              'export.baseline_archs=["w16[k3e1] f128", "w24[k3e1] f128"]'], device_type="cpu")
    assert (cfg.name, cfg.data.root, cfg.export.select) == ("010", "1.10", "0x10")
    assert cfg.export.hand_arch == "w16[k3e1] f128"  # quotes are still removed
    assert cfg.export.baseline_archs == ["w16[k3e1] f128", "w24[k3e1] f128"]


def test_describe_lists_nested_keys_with_help():
    rows = {key: text for key, _, text in describe()}
    assert "data.augment.crop_padding" in rows and rows["train.epochs"]
    assert "light / nachos" in rows["exits.head"]


def test_cli_names_the_bad_key_and_fails():
    proc = subprocess.run([sys.executable, "-m", "nachos", "supernet", "nosuchkey=1"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "nosuchkey" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_readme_documents_every_config_key():
    readme = (REPO / "README.md").read_text()
    missing = [key for key, _, _ in describe() if f"`{key}`" not in readme]
    assert not missing, f"README's configuration reference lacks {missing}"


def test_a_saved_config_runs_on_this_machine_with_its_own_recipe(tmp_path: Path) -> None:
    from nachos.config import config_to_dict, saved_config_here

    run = load_config(CIFAR, ["train.epochs=48", "seed=3", "device=cuda", "num_threads=8",
                              "data.cache_dir=/elsewhere/cache"], device_type="cuda")
    stored = config_to_dict(run)
    stored["profiles"] = {"cpu": {"train.epochs": 7}}  # saved before save_config emptied the profiles
    here = load_config(CIFAR, ["device=cpu", "num_threads=1", f"data.cache_dir={tmp_path}", "export.onnx=false"],
                       device_type="cpu")
    got = saved_config_here(stored, here)
    assert (got.train.epochs, got.seed, got.space, got.profiles) == (48, 3, run.space, {})  # the run's recipe
    assert (got.device, got.num_threads, got.export.onnx) == ("cpu", 1, False)  # the machine is this one
    assert got.data.cache_dir == str(tmp_path)  # this machine's cache: the saved one does not exist here
