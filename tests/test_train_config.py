"""Config loading: YAML over defaults, dotted overrides, unknown keys and wrong types rejected."""

import pytest
import torch

import fastrel
from train.config import ConfigError, load_config
from train.model import build_model


def test_yaml_then_overrides_apply_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  arch: resnet18\noptim:\n  epochs: 7\n  milestones: [3, 5]\n")
    config = load_config(path, ["optim.epochs=9", "optim.lr=1", "model.hidden_channels=32"])
    assert config.model.arch == "resnet18"
    assert config.optim.epochs == 9
    assert config.optim.milestones == [3, 5]
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.model.hidden_channels == 32


def test_unknown_key_in_yaml_fails_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.learning_rate'"):
        load_config(path)


def test_unknown_key_in_override_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.depth'"):
        load_config(None, ["model.depth=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer'"):
        load_config(None, ["trainer.epochs=3"])


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"optim\.epochs: expected int"):
        load_config(None, ["optim.epochs=many"])


def test_shipped_configs_load():
    for name in ("configs/mars_paper.yaml", "configs/synthetic.yaml", "configs/mars_large_map.yaml"):
        load_config(name)
    paper = load_config("configs/mars_paper.yaml")
    assert (paper.data.P, paper.data.K, paper.model.arch, paper.model.last_stride) == (18, 4, "resnet50", 1)
    assert (paper.optim.lr, paper.optim.weight_decay, paper.optim.epochs) == (3e-4, 5e-4, 375)
    assert paper.optim.milestones == [125, 250]


def test_large_map_config_puts_rgsa_on_512_positions_through_the_sort_path():
    config = load_config("configs/mars_large_map.yaml")
    stride = 16 if config.model.last_stride == 1 else 32
    assert (config.data.height // stride) * (config.data.width // stride) == 512
    chosen = fastrel.backends.select("auto", "cpu", torch.float32, config.model.inner, config.model.outer, False)
    assert chosen == "sort"
    model = build_model(config.model, num_classes=3)
    assert (model.spatial.relation.inner, model.spatial.relation.outer) == ("relu", "identity")
    assert (model.temporal.relation.inner, model.temporal.relation.outer) == ("relu", "identity")
