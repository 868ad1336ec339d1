"""Experiment configuration: one flat dataclass, presets, and validation.

A config is a dict, a :class:`Config`, or a path to a YAML file. Fields left at ``None``
are filled from the preset (``smoke``, ``quick`` or ``paper``) for the chosen method and
dataset, so a config file only needs to say what differs. Every problem found is listed in
one :class:`ConfigError` before any training starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import yaml

DATASETS = ("digits", "shapes", "cifar100", "imagenet100", "features")
METHODS = ("finetune", "replay", "joint", "scl_pnc",
           "clip_zeroshot", "clip_adapter", "clip_rapf", "clip_awpf")
PRESETS = ("smoke", "quick", "paper")
BACKBONES = ("auto", "cnn", "resnet32", "resnet18")


class ConfigError(ValueError):
    """A config that cannot run. ``problems`` lists one message per problem."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class Config:
    """All settings of one run. ``None`` means: take the preset's value."""

    method: str = "replay"
    dataset: str = "digits"
    base: Optional[int] = None
    increment: Optional[int] = None
    seed: int = 0
    preset: str = "quick"
    class_order: Optional[list] = None
    root: Optional[str] = None
    out_dir: Optional[str] = None
    device: str = "auto"
    dataset_kwargs: dict = field(default_factory=dict)
    # optimisation (shared by every method that trains a network)
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    weight_decay_later: Optional[float] = None
    lr_milestones: Optional[list] = None
    lr_gamma: Optional[float] = None
    grad_clip: Optional[float] = None
    augment: Optional[bool] = None
    num_workers: int = 0
    threads: Optional[int] = None     # CPU threads for torch during the run (None: torch's default)
    eval_batch_size: int = 512
    # memory and model
    memory_budget: Optional[int] = None
    backbone: str = "auto"
    width: Optional[int] = None
    blocks: Optional[int] = None
    base_stages: Optional[int] = None  # backbone stages in the shared base (None: the reference split)
    # checkpoints
    checkpoint_every: int = 0
    resume: bool = False
    progress: bool = True
    # SCL-PNC
    head: str = "etf"                 # etf | linear
    etf_mode: str = "procrustes"      # procrustes | redraw | fixed
    loss: Optional[str] = None        # dr | ce (preset: dr for paper, ce on the CPU presets)
    rebalance: Optional[bool] = None  # per-class rebalancing of the DR/CE loss (preset: on for CPU presets)
    adapt_layer: bool = True
    adapt_hidden: Optional[int] = None
    adapt_out: Optional[int] = None
    expansion: str = "parallel"       # parallel | serial
    module_width: Optional[int] = None
    kd_weight: float = 0.25
    kd_epochs: Optional[int] = None
    # CLIP parameter fusion
    clip_model: Optional[str] = None
    clip_pretrained: Optional[str] = None
    clip_checkpoint: Optional[str] = None
    templates: Optional[list] = None
    cache_dir: Optional[str] = None
    pseudo_per_class: Optional[int] = None
    hard_pair_threshold: Optional[float] = None
    hard_pair_weight: float = 1.0
    fusion_bias: float = 0.5
    fusion_alpha: Optional[float] = None   # fixed alpha for clip_awpf; None = adaptive search
    fusion_lambda: float = 1.0
    fusion_energy: float = 0.999
    alpha_grid: int = 11

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, ignore=("out_dir", "resume", "progress", "device", "num_workers", "threads",
                                  "eval_batch_size", "checkpoint_every", "cache_dir")) -> dict:
        """The settings that define the numbers of a run (a checkpoint must match them)."""
        return {k: v for k, v in self.to_dict().items() if k not in ignore}

    def digest(self) -> str:
        blob = json.dumps(self.fingerprint(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def run_name(self) -> str:
        return f"{self.method}_{self.dataset}_B{self.base}_Inc{self.increment}_s{self.seed}_{self.preset}"


FIELD_TYPES = {f.name: f.type for f in fields(Config)}


def _type_ok(name: str, value: Any) -> bool:
    t = FIELD_TYPES[name]
    if value is None:
        return "Optional" in t
    if "bool" in t:
        return isinstance(value, bool)
    if "int" in t:
        return isinstance(value, int) and not isinstance(value, bool)
    if "float" in t:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if "str" in t:
        return isinstance(value, str)
    if "list" in t:
        return isinstance(value, (list, tuple))
    if "dict" in t:
        return isinstance(value, dict)
    return True


def load_config(config: Union[dict, Config, str, Path], **overrides) -> Config:
    """Read a config (dict, Config, or YAML path), apply overrides, check keys and types.

    Preset values are *not* filled here: see :func:`resolve_config`.
    """
    if isinstance(config, Config):
        data = config.to_dict()
    elif isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise ConfigError([f"config file {str(path)!r} does not exist"])
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError([f"{path}: a config file must hold a mapping of keys to values"])
    elif isinstance(config, dict):
        data = dict(config)
    else:
        raise ConfigError([f"a config must be a dict, a Config or a YAML path, not {type(config).__name__}"])
    data.update(overrides)
    problems = []
    for key in data:
        if key not in FIELD_TYPES:
            close = [k for k in FIELD_TYPES if k.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint}; `python -m pnc_lib list` shows the valid keys")
    for key, value in data.items():
        if key in FIELD_TYPES and not _type_ok(key, value):
            problems.append(f"{key}={value!r} has the wrong type: expected {FIELD_TYPES[key]}")
    if problems:
        raise ConfigError(problems)
    if isinstance(data.get("lr_milestones"), tuple):
        data["lr_milestones"] = list(data["lr_milestones"])
    return Config(**data)


def resolve_config(cfg: Config) -> Config:
    """Fill every ``None`` field from the preset, then validate values. Returns a new Config."""
    from .presets import CLIP_METHODS, preset_defaults  # local import: presets imports Config names

    problems = []
    if cfg.method not in METHODS:
        problems.append(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.dataset not in DATASETS:
        problems.append(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    if cfg.preset not in PRESETS:
        problems.append(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    if cfg.backbone not in BACKBONES:
        problems.append(f"unknown backbone {cfg.backbone!r}; choose one of {', '.join(BACKBONES)}")
    for name, allowed in (("head", ("etf", "linear")), ("etf_mode", ("procrustes", "redraw", "fixed")),
                          ("loss", ("dr", "ce")), ("expansion", ("parallel", "serial"))):
        if getattr(cfg, name) not in allowed and not (name == "loss" and cfg.loss is None):
            problems.append(f"{name}={getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    if problems:
        raise ConfigError(problems)
    defaults = preset_defaults(cfg.preset, cfg.method, cfg.dataset)
    data = cfg.to_dict()
    for key, value in defaults.items():
        if data.get(key) is None or (key == "dataset_kwargs" and not data[key]):
            data[key] = value
    if cfg.backbone == "auto":
        data["backbone"] = defaults.get("backbone", "cnn")
    elif cfg.base_stages is None and cfg.backbone != defaults.get("backbone"):
        data["base_stages"] = None    # the preset's split is for its own backbone: use the reference one
    out = Config(**data)
    for name in ("epochs", "batch_size", "increment"):
        v = getattr(out, name)
        if v is not None and v < 1:
            problems.append(f"{name} must be >= 1, got {v}")
    if out.base is not None and out.base < 0:
        problems.append(f"base must be >= 0 (0 means B0: the first task has `increment` classes), got {out.base}")
    if out.memory_budget is not None and out.memory_budget < 0:
        problems.append(f"memory_budget must be >= 0, got {out.memory_budget}")
    if out.lr is not None and out.lr <= 0:
        problems.append(f"lr must be > 0, got {out.lr}")
    if out.method not in CLIP_METHODS:
        from .models.backbones import base_stages_problem

        problem = base_stages_problem(out.backbone, out.base_stages)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError(problems)
    return out


def make_config(config=None, **overrides) -> Config:
    """load_config + resolve_config."""
    return resolve_config(load_config(config if config is not None else {}, **overrides))
