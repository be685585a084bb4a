"""Typed run configuration: a YAML file (read with yaml.safe_load) plus `section.key=value` overrides, validated with
errors that name the key and what it allows. The resolved config is saved with every run (config.yaml).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass
class SpaceConfig:
    name: str = "nb201"          # nb201 | darts (and its variants)
    C: int = 16                  # initial channels
    N: int = 5                   # cells per stage (nb201) / cells in total (darts)
    bn_affine: bool = False      # affine BN inside candidate ops (the papers' supernets: False)
    bn_track: bool = True        # running statistics in candidate-op BN
    alpha_init_std: float = 1e-3


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    subset: int | None = None    # train images used before the search split halves them
    portion: float = 0.5         # share of the (subset of the) train set that trains the weights
    batch_size: int = 64
    eval_batch_size: int = 256
    image_size: int | None = None  # resize once at load time; None keeps the dataset's size
    augment: bool = True
    cutout: int = 0


@dataclass
class SearchConfig:
    optimizer: str = "darts"     # darts (first order) | fixed-alpha | ...
    epochs: int = 50
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    w_nesterov: bool = False
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    a_beta1: float = 0.5
    a_beta2: float = 0.999
    a_weight_decay: float = 1e-3
    channels_last: bool = True
    checkpoint_every: int = 0    # also checkpoint every this many steps inside an epoch (0: at epoch ends only)
    options: dict = field(default_factory=dict)  # optimizer-specific options, validated by the optimizer


@dataclass
class SelectConfig:
    selectors: list[str] = field(default_factory=lambda: ["magnitude"])
    options: dict = field(default_factory=dict)  # {selector name: {option: value}}, validated by each selector


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    deterministic: bool = True
    threads: int | None = None    # torch intra-op threads; None leaves torch's default
    benchmark: str | None = None  # path of a NAS-Bench-201 table; None: the imported one, if any
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    select: SelectConfig = field(default_factory=SelectConfig)


# -- building typed dataclasses from plain data ---------------------------------------------------------------------

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str):
    """Convert a YAML value (or override text, already YAML-parsed) to the field's type, or fail naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected text, got {value!r}")
        return value
    if tp is Any:
        return value
    raise UserError(f"{key}: unsupported type {_type_name(tp)}")


def build(cls, data: Any, prefix: str = ""):
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys with the list of known ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise UserError(f"unknown config key {full!r}; known keys{' in ' + prefix if prefix else ''}: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    data = read_yaml(path) if path else {}
    cfg = build(RunConfig, apply_overrides(data, list(overrides)))
    check(cfg)
    return cfg


def check(cfg: RunConfig) -> None:
    """Cross-field rules a type cannot express."""
    rules = [
        (cfg.search.epochs >= 0, "search.epochs must be >= 0"),
        (cfg.data.batch_size > 0, "data.batch_size must be > 0"),
        (cfg.data.eval_batch_size > 0, "data.eval_batch_size must be > 0"),
        (0.0 < cfg.data.portion < 1.0, "data.portion must be between 0 and 1"),
        (cfg.data.subset is None or cfg.data.subset > 1, "data.subset must be at least 2"),
        (cfg.space.C > 0 and cfg.space.N > 0, "space.C and space.N must be positive"),
        (cfg.search.w_lr > 0 and cfg.search.w_lr_min >= 0, "search.w_lr must be > 0 and search.w_lr_min >= 0"),
        (cfg.search.checkpoint_every >= 0, "search.checkpoint_every must be >= 0"),
        (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
         f"device {cfg.device!r}: choose auto, cpu, cuda or cuda:N"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(message)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
