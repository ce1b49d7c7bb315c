"""Typed run configuration: defaults here, a YAML file over them, ``key.sub=value`` overrides last.

Every key a file or an override names must exist in the defaults; anything else is an error that
names the key, so a misspelt option never silently does nothing. Types come from the annotations;
``validate`` then checks values against ``RULES`` (and that every float is finite) before a run
starts, so a bad evaluation setting fails at once rather than after training. A new key gets its
type check for free and a line in ``RULES`` when some values of its type are meaningless.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


@dataclass
class DataConfig:
    name: str = "synthetic"  # a dataset known to train.data.load_dataset
    root: str = "data"
    split_id: int = 0
    protocol: str = "torchreid"
    height: int = 256
    width: int = 128
    seq_len: int = 8  # T frames per training clip
    P: int = 18  # identities per global batch
    K: int = 4  # tracklets per identity
    workers: int = 2  # DataLoader workers per process


@dataclass
class ModelConfig:
    arch: str = "resnet50"  # resnet50 | resnet18
    pretrained: str = ""  # local path of ImageNet weights (a torchvision state_dict); "" = random init
    last_stride: int = 1
    head: str = "relation"  # relation (RGSA + RGTR) | avgpool (baseline)
    hidden_channels: int | None = None  # RGSA/RGTR hidden width H (None: C/8)
    relation_channels: int | None = None  # RGSA/RGTR relation width R (None: C/16)
    backend: str = "auto"  # fastrel backend for the relation modules
    inner: str = "identity"  # relation activation δ (relu | leaky_relu | abs | identity); docs/method_study.md
    outer: str = "relu"  # relation activation σ (relu | leaky_relu | identity; identity + relu/abs: sort path)
    identity_init: bool = True  # RGTR starts as the identity refinement, RGSA's score scale as below
    rgtr_residual: bool = True  # RGTR refines as f + FC([f; g]) (FC from zero, no BN), not BN(FC([f; g]))
    attention_scale_init: float = 0.0  # RGSA's score BN scale γ at the start (0: RGSA starts as average pooling)


@dataclass
class LossConfig:
    label_smoothing: float = 0.1
    triplet: str = "soft"  # soft (soft-margin) | margin
    margin: float = 0.3
    frame_weight: float = 1.0
    clip_weight: float = 1.0
    triplet_weight: float = 1.0


@dataclass
class OptimConfig:
    lr: float = 3.0e-4
    weight_decay: float = 5.0e-4
    epochs: int = 375
    milestones: list[int] = field(default_factory=lambda: [125, 250])
    gamma: float = 0.1
    warmup_epochs: int = 10
    warmup_factor: float = 0.01  # lr multiplier at the first warm-up step
    steps_per_epoch: int = 0  # 0: one pass of the sampler; >0 caps the steps per epoch
    head_lr_factor: float = 1.0  # lr of the RGSA/RGTR parameters as a multiple of optim.lr
    head_weight_decay: float | None = None  # weight decay of the RGSA/RGTR parameters (None: optim.weight_decay)


@dataclass
class EvalConfig:
    mode: str = "chunks"  # chunks (mean over chunk features) | all (RGTR over every frame)
    chunk_len: int = 8  # frames per chunk in "chunks" mode
    max_frames: int = 0  # "all" mode: evenly keep at most this many frames (0 = every frame)
    batch_size: int = 16  # clips per forward in feature extraction
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    period: int = 0  # evaluate every this many epochs (0: only at the end)
    num_queries_shown: int = 4  # queries in the ranking picture
    top_k_shown: int = 5


@dataclass
class RunConfig:
    output: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast (GPU only)
    sync_bn: bool = True  # batch statistics over all processes (a DDP step equals a 1-process step)
    log_every: int = 10  # TensorBoard scalars every this many steps
    progress: bool = True  # tqdm bars on rank 0
    eval_only: bool = False
    ddp_timeout_minutes: float = 10.0  # a collective waiting longer than this fails the run (a frozen rank)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


EVAL_MODES = ("chunks", "all")  # see train/evaluate.py
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type or range."""


# A rule returns None for a good value, else what it expected.
Rule = Callable[[Any], "str | None"]


def at_least(low: float) -> Rule:
    return lambda v: None if v >= low else f"expected at least {low}"


def above(low: float) -> Rule:
    return lambda v: None if v > low else f"expected more than {low}"


def within(low: float, high: float, high_open: bool = False) -> Rule:
    bracket = ")" if high_open else "]"
    return lambda v: (
        None if low <= v and (v < high if high_open else v <= high) else f"expected a value in [{low}, {high}{bracket}"
    )


def one_of(*choices: str) -> Rule:
    return lambda v: None if v in choices else f"expected one of {list(choices)}"


def non_empty(v: str) -> str | None:
    return None if v.strip() else "expected a non-empty string"


def each(rule: Rule) -> Rule:
    return lambda values: next((f"item {i}: {e}" for i, v in enumerate(values) if (e := rule(v))), None)


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


RULES: dict[str, Rule] = {
    "data.split_id": at_least(0),
    "data.height": at_least(1),
    "data.width": at_least(1),
    "data.seq_len": at_least(1),
    "data.P": at_least(1),
    "data.K": at_least(1),
    "data.workers": at_least(0),
    "model.hidden_channels": optional(at_least(1)),
    "model.relation_channels": optional(at_least(1)),
    "loss.label_smoothing": within(0.0, 1.0, high_open=True),
    "loss.margin": at_least(0.0),
    "loss.frame_weight": at_least(0.0),
    "loss.clip_weight": at_least(0.0),
    "loss.triplet_weight": at_least(0.0),
    "optim.lr": above(0.0),
    "optim.weight_decay": at_least(0.0),
    "optim.epochs": at_least(1),
    "optim.milestones": each(at_least(1)),
    "optim.gamma": above(0.0),
    "optim.warmup_epochs": at_least(0),
    "optim.warmup_factor": within(0.0, 1.0),
    "optim.steps_per_epoch": at_least(0),
    "optim.head_lr_factor": above(0.0),
    "optim.head_weight_decay": optional(at_least(0.0)),
    "eval.mode": one_of(*EVAL_MODES),
    "eval.chunk_len": at_least(1),
    "eval.max_frames": at_least(0),
    "eval.batch_size": at_least(1),
    "eval.k1": at_least(1),
    "eval.k2": at_least(1),
    "eval.lambda_value": within(0.0, 1.0),
    "eval.period": at_least(0),
    "eval.num_queries_shown": at_least(1),
    "eval.top_k_shown": at_least(1),
    "run.output": non_empty,
    "run.seed": at_least(0),
    "run.device": one_of(*DEVICES),
    "run.log_every": at_least(1),
    "run.ddp_timeout_minutes": above(0.0),
}


def load_config(path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``key.sub=value`` overrides; validated."""
    config = Config()
    if path is not None:
        with open(path) as handle:
            try:
                tree = yaml.safe_load(handle) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
        _merge(config, tree, prefix="")
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected the form key.sub=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: cannot read {text!r} as a YAML value: {err}") from err
        set_value(config, key, value)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Raise ConfigError naming the first key whose value breaks its rule or is a non-finite float."""
    from train.data.registry import DATASETS  # the readers own the dataset and protocol names
    from train.data.tracklet import PROTOCOLS

    rules = {**RULES, "data.name": one_of(*DATASETS), "data.protocol": one_of(*PROTOCOLS)}
    for key, value in flatten(to_dict(config)).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        problem = rules[key](value) if key in rules else None
        if problem:
            raise ConfigError(f"{key}: {problem}, got {value!r}")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_value(config: Config, dotted: str, value: Any) -> None:
    """Set ``config.<dotted>`` to ``value`` after checking that the key exists and the type fits."""
    *parents, leaf = dotted.split(".")
    node: Any = config
    for depth, part in enumerate(parents):
        if not dataclasses.is_dataclass(node) or part not in _field_names(node):
            raise ConfigError(f"unknown config key {'.'.join(parents[: depth + 1])!r}")
        node = getattr(node, part)
    if not dataclasses.is_dataclass(node) or leaf not in _field_names(node):
        raise ConfigError(f"unknown config key {dotted!r}")
    if dataclasses.is_dataclass(getattr(node, leaf)):
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted}: expected a mapping of its keys, got {value!r}")
        _merge(getattr(node, leaf), value, prefix=dotted + ".")
        return
    hint = get_type_hints(type(node))[leaf]
    setattr(node, leaf, _coerce(value, hint, dotted))


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def dump(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _merge(node: Any, tree: dict, prefix: str) -> None:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in _field_names(node):
            raise ConfigError(f"unknown config key {dotted!r}")
        child = getattr(node, key)
        if dataclasses.is_dataclass(child):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a mapping of its keys, got {value!r}")
            _merge(child, value, dotted + ".")
        else:
            setattr(node, key, _coerce(value, get_type_hints(type(node))[key], dotted))


def _field_names(node: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(node)}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the declared type ``hint``; int widens to float; anything else must match."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and value is None:
        return ""
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value
