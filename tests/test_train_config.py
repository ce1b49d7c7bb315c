"""Config loading: YAML over defaults, dotted overrides, unknown keys, wrong types and bad values
rejected naming the key, before anything runs."""

import re

import pytest
import torch

import fastrel
from train.config import RULES, Config, ConfigError, flatten, load_config, to_dict, validate
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.mode=average", r"eval\.mode: expected one of \['chunks', 'all'\], got 'average'"),
        ("eval.chunk_len=0", r"eval\.chunk_len: expected at least 1, got 0"),
        ("eval.batch_size=-2", r"eval\.batch_size: expected at least 1, got -2"),
        ("optim.epochs=0", r"optim\.epochs: expected at least 1, got 0"),
        ("optim.lr=-0.1", r"optim\.lr: expected more than 0.0, got -0.1"),
        ("optim.lr=.nan", r"optim\.lr: expected a finite number, got nan"),
        ("optim.milestones=[10, 0]", r"optim\.milestones: item 1: expected at least 1"),
        ("run.output=", r"run\.output: expected a non-empty string, got ''"),
        ("run.output='  '", r"run\.output: expected a non-empty string"),
        ("run.device=tpu", r"run\.device: expected one of"),
        ("run.ddp_timeout_minutes=0", r"run\.ddp_timeout_minutes: expected more than 0.0"),
        ("data.name=market1501", r"data\.name: expected one of \['mars'"),
        ("data.protocol=mars", r"data\.protocol: expected one of \['torchreid', 'official'\]"),
        ("loss.label_smoothing=1", r"loss\.label_smoothing: expected a value in \[0.0, 1.0\)"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_errors_name_the_override_key_or_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^optim\.milestones: cannot read '\[10, 20' as a YAML value"):
        load_config(None, ["optim.milestones=[10, 20"])
    path = tmp_path / "broken.yaml"
    path.write_text("optim:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": not valid YAML"):
        load_config(path)


def test_every_rule_names_an_existing_key():
    keys = set(flatten(to_dict(Config())))
    assert set(RULES) <= keys
    validate(Config())


def test_run_rejects_a_bad_eval_value_before_reading_data_or_training(tmp_path, monkeypatch):
    import train.run

    def must_not_run(*args):
        raise AssertionError("data loading started before the config was validated")

    monkeypatch.setattr(train.run, "load_data", must_not_run)
    config = Config()
    config.run.output = str(tmp_path)
    config.eval.mode = "mean"  # set directly, as a script would, past load_config
    with pytest.raises(ConfigError, match=r"eval\.mode"):
        train.run.run(config)


def test_ddp_timeout_comes_from_the_config(monkeypatch):
    from datetime import timedelta

    import torch.distributed as dist

    from train import distributed

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: seen.update(timeout=timeout))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    assert distributed.setup(torch.device("cpu"), Config().run.ddp_timeout_minutes) == (1, 2)
    assert seen["timeout"] == timedelta(minutes=10)
    distributed.setup(torch.device("cpu"), 2.5)
    assert seen["timeout"] == timedelta(minutes=2.5)


@pytest.mark.parametrize("environment, joins", [({"WORLD_SIZE": "1"}, True), ({}, False)])
def test_a_one_process_torchrun_forms_a_process_group_and_plain_python_does_not(monkeypatch, environment, joins):
    """torchrun with one process takes the DDP path (nccl on a GPU); ``python -m train`` takes none."""
    import torch.distributed as dist

    from train import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: seen.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 1)
    assert distributed.setup(torch.device("cpu"), 1.0) == (0, 1)
    assert seen == (["gloo"] if joins else [])
