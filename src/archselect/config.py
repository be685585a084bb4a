"""Typed run configuration: a YAML file (read with yaml.safe_load) plus `section.key=value` overrides, validated with
errors that name the key and what it allows. The resolved config is saved with every run (config.yaml).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .distributed import launch_env
from .errors import UserError
from .executors import EXECUTORS
from .mobilenet_text import MBCONV_OPS, STAGE_SPECS, STEM_WIDTHS, kernel_and_expansion
from .mobilenet_text import SPACE as SPACE_MOBILENET


@dataclass
class SpaceConfig:
    name: str = "nb201"          # nb201 | darts (and its variants) | mobilenet
    C: int = 16                  # initial channels
    N: int = 5                   # cells per stage (nb201) / cells in total (darts)
    bn_affine: bool = False      # affine BN inside candidate ops (the papers' supernets: False)
    bn_track: bool = True        # running statistics in candidate-op BN
    alpha_init_std: float = 1e-3
    # DARTS-family spaces only (darts, darts-7, darts-s1, darts-s2, darts-s3, darts-s4):
    stem_multiplier: int = 3     # stem conv output = stem_multiplier * C channels (DARTS: 3)
    partial_channels: int = 1    # PC-DARTS K: 1/K of each edge's channels go through its ops (Shapley-NAS: 4; 1 = off)
    edge_norm: bool = False      # PC-DARTS edge normalisation: a learned β per edge, softmax over a node's inputs
    pool_bn: bool = True         # BN(affine=False) after the supernet's pooling ops, as original DARTS
    recompute: bool = True       # recompute the supernet's depthwise-pointwise conv outputs in backward instead of
                                 # storing them: same numbers, ~25% less memory, ~10% more time
    # mobilenet (ProxylessNAS' space) only:
    resolution: int = 224        # stride layout: 224 (ImageNet, 32x downsampling) | 32 (CIFAR: stem, stage 1 stride 1)
    width_mult: float = 1.0      # scales every width (multiples of 8)
    stage_layers: list[int] | None = None  # layers in each of the 6 stages; None: the paper's [4, 4, 4, 4, 4, 1]
    elastic: bool = False        # Once-for-All's elastic supernet: a layer's candidates share one block's weights
                                 # (search.optimizer=ofa trains it; docs/optimizers.md)


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    subset: int | None = None    # train images used before the search split halves them
    portion: float = 0.5         # share of the (subset of the) train set that trains the weights
    valid_size: int | None = None  # instead of portion: hold out exactly this many images for search-valid
                                   # (ProxylessNAS on ImageNet: 50000)
    valid_balanced: bool = False   # valid_size images drawn class by class, the same count from each (ProxylessNAS'
                                   # released code); false: one uniform draw (its paper's "randomly sample")
    batch_size: int = 64
    eval_batch_size: int = 256
    image_size: int | None = None  # resize once at load time; None keeps the dataset's size (folder datasets such
                                   # as imagenet: the crop size, None = 224)
    augment: bool = True
    cutout: int = 0
    workers: int = 4             # folder datasets (imagenet): processes decoding JPEGs, 0 = in the main process


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
    bf16: bool = False           # bf16 autocast in the search steps (~1.3x on CPUs with AVX-512 bf16; changes numerics)
    checkpoint_every: int = 0    # also checkpoint every this many steps inside an epoch (0: at epoch ends only)
    hessian_eig: bool = False    # record the dominant eigenvalue of the validation-loss Hessian w.r.t. α each epoch
    hessian_batches: int = 2     # search-validation batches in that Hessian (the R-DARTS collapse signal)
    hessian_iters: int = 20      # power-iteration steps at most
    options: dict = field(default_factory=dict)  # optimizer-specific options, validated by the optimizer


@dataclass
class SelectConfig:
    selectors: list[str] = field(default_factory=lambda: ["magnitude"])
    options: dict = field(default_factory=dict)  # {selector name: {option: value}}, validated by each selector
    variants: dict = field(default_factory=dict)  # {label: {selector: NAME, option: value}}: selection/variants.py
    workers: int = 1              # split Shapley permutations and DARTS-PT candidate evaluations over this many workers
    executor: str = "sequential"  # where those workers run: sequential (in turn, here; same results) | ray


@dataclass
class SplitConfig:
    """Few-shot NAS: split the supernet into sub-supernets during the search (docs/fewshot.md). `auto` values take
    the official setting of the space: NB201 (one cell type), DARTS (normal + reduce cells) or MobileNet (stages)."""
    method: str = "none"          # none | gm (gradient matching, GM-NAS) | exhaustive (one sub-supernet per op)
    epochs: list[int] = field(default_factory=lambda: [15, 30])  # search epochs at which to split (official NB201)
    groups: int | list[int] | str = "auto"  # gm: groups per split, or one count per split epoch; auto: 2 (NB201,
                                  # DARTS), [2, 3, 3, ...] (MobileNet), len(sizes) when sizes are given
    sizes: list[int] | None = None  # gm: exact group sizes, e.g. [2, 3]; None: every group holds >= 2 ops
    batches: int = 100            # gm: training batches averaged per gradient distance (official 100; --fast 10)
    distance: str = "cos"         # cos | per-filter-cos | mse
    edge_criterion: str = "auto"  # auto | cut (largest cut; NB201) | within (smallest within-group; DARTS) | first
    edges: list[int] | None = None  # the edge to split at each level (official `predefine`); overrides the criterion
    cell_types: list[str] | None = None  # cell types whose edges may split; None: all (NB201), normal only (DARTS)
    op_weight: str = "auto"       # auto | one (NB201: the measured op weighs 1) | softmax (DARTS: its softmax value)
    warmup_alpha: str = "auto"    # α before the last split: auto | init (kept; NB201) | equal (0; DARTS) | learn
    restart: str = "auto"         # auto | final (re-initialise after the last split; NB201, DARTS) |
                                  # inherit (keep the state; MobileNet)
    restart_schedule: str = "auto"  # final restart's cosine: auto | total (NB201) | remaining (DARTS, fix_sche)
    choose: str = "supernet"      # supernet (search-valid accuracy of each selection) | oracle (benchmark; analysis)
    bn: str = "train"             # BN while scoring a selection: train (batch statistics; official) | eval (running)
    oracle_metric: str = "cifar10_valid"  # the benchmark column `choose: oracle` maximises
    shared: str = "ops"           # gm: weights compared: ops (other edges' ops + fixed layers between cells; paper) |
                                  # all (every other weight, stem/head/classifier too; GM-NAS' ProxylessNAS code)


@dataclass
class TrainConfig:
    """Retraining an architecture from scratch (`archselect train`) on the dataset's train split, reported on its test
    split. Defaults: the NAS-Bench-201 protocol; the DARTS protocol in comments (configs/train-darts-paper.yaml)."""
    C: int = 16                  # initial channels (DARTS: 36)
    N: int = 5                   # cells per stage (nb201) / cells in total (darts: 20)
    epochs: int = 200            # DARTS: 600
    batch_size: int = 256        # DARTS: 96
    lr: float = 0.1              # DARTS: 0.025; cosine schedule over the epochs
    lr_min: float = 0.0          # the cosine schedule's floor (both protocols: 0)
    lr_schedule: str = "cosine"  # cosine (to lr_min over the epochs) | step (x lr_gamma every lr_step epochs:
                                 # DARTS' ImageNet protocol, 0.97 every epoch)
    lr_gamma: float = 0.97       # step schedule only
    lr_step: int = 1             # step schedule only
    momentum: float = 0.9
    weight_decay: float = 5e-4   # DARTS: 3e-4
    nesterov: bool = True        # DARTS: false
    grad_clip: float = 0.0       # gradient-norm clip, 0 = off (DARTS: 5)
    label_smoothing: float = 0.0  # ImageNet protocols: 0.1
    auxiliary_weight: float = 0.0  # weight of the auxiliary head's loss, 0 = no head (DARTS: 0.4; darts space only)
    drop_path: float = 0.0       # final drop-path probability, ramped linearly from 0 (DARTS code: 0.2; some papers
                                 # and Shapley-NAS' code: 0.3; darts space only)
    augment: bool = True         # pad-crop, plus flips where the dataset allows them
    cutout: int = 0              # cutout side in pixels, 0 = off (DARTS: 16)
    color_jitter: bool = False   # folder datasets: DARTS' ImageNet ColorJitter (brightness, contrast, saturation 0.4,
                                 # hue 0.2) after the random-resized crop and flip
    subset: int | None = None    # train on this many train images (seeded draw); None: the whole train split
    eval_every: int = 1          # test-set evaluation every this many epochs (0: after the last only)
    channels_last: bool = True


@dataclass
class LoggingConfig:
    tensorboard: bool = False     # per-epoch scalars and softmax(α) per edge into RUN/tb/ (pip install archselect[tensorboard])


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
    train: TrainConfig = field(default_factory=TrainConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# -- building typed dataclasses from plain data ---------------------------------------------------------------------

MAX_INT = 2 ** 63 - 1
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)
MAX_CONFIG_BYTES = 1 << 20   # a config file or an override longer than this is not a config
MAX_CONFIG_NODES = 100_000   # values in a config once YAML aliases are expanded (a 319-byte alias bomb has billions)
MAX_CONFIG_DEPTH = 32        # nesting of mappings and lists


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def did_you_mean(name: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices` to a misspelt `name`, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _yaml_position(e: Exception) -> str:
    """' at line L, column C' of a YAML error (1-based, where the parser stopped)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def check_plain(data: Any, where: str) -> Any:
    """Refuse YAML data too deep or too large once its aliases are expanded, before anything walks or writes it."""
    budget = [MAX_CONFIG_NODES]

    def walk(node: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise UserError(f"{where}: too large (more than {MAX_CONFIG_NODES} values once YAML aliases are expanded)")
        if depth > MAX_CONFIG_DEPTH:
            raise UserError(f"{where}: nested more than {MAX_CONFIG_DEPTH} levels deep")
        if isinstance(node, dict):
            for k, v in node.items():
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(node, (list, tuple, set)):
            for v in node:
                walk(v, depth + 1)

    walk(data, 0)
    return data


def safe_yaml(text: str | bytes, where: str) -> Any:
    """yaml.safe_load with every failure (syntax, depth, encoding, size, alias expansion) as one UserError."""
    if len(text) > MAX_CONFIG_BYTES:
        raise UserError(f"{where}: too large for a config ({len(text)} bytes, at most {MAX_CONFIG_BYTES})")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{where} is not valid YAML{_yaml_position(e)}: "
                        f"{getattr(e, 'problem', None) or (str(e).splitlines() or [type(e).__name__])[0]}") from None
    except RecursionError:
        raise UserError(f"{where} is not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. an impossible timestamp or an unhashable key
        raise UserError(f"{where} is not valid YAML: {_short(str(e))}") from None
    return check_plain(data, where)


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
            raise UserError(f"{key}: expected an integer, got {_short(value)}")
        if not -MAX_INT <= value <= MAX_INT:
            raise UserError(f"{key}: {_short(value)} is out of range (at most {MAX_INT} in size)")
        return value
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = float(value.strip())  # YAML 1.1 reads 5e-4 (no dot) as text; it is a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {_short(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise UserError(f"{key}: {_short(value)} is out of range") from None
        if not math.isfinite(value):
            raise UserError(f"{key}: expected a finite number, got {value!r}")
        return value
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
            raise UserError(f"unknown config key {full!r}{did_you_mean(str(key), names)}; known keys"
                            f"{' in ' + prefix if prefix else ''}: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} must look like section.key=value")
    try:
        value = safe_yaml(raw, f"override {key.strip()!r}") if raw.strip() else None
    except UserError as e:
        if "not valid YAML" not in str(e):
            raise
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


def read_small_file(path: str | Path, where: str) -> bytes:
    """The bytes of a config-sized file (at most MAX_CONFIG_BYTES); a missing, oversized or unreadable file is a
    one-line UserError naming `where`."""
    p = Path(path)
    try:
        if not p.is_file():
            raise UserError(f"{where} does not exist")
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"{where} is too large ({p.stat().st_size} bytes, at most {MAX_CONFIG_BYTES})")
        return p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {where} ({e.strerror or e})") from None


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    data = safe_yaml(read_small_file(p, f"config file {p}"), f"config file {p}")
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
    check_ranges(cfg)
    rules = [
        (cfg.search.epochs >= 0, "search.epochs must be >= 0"),
        (not cfg.logging.tensorboard or importlib.util.find_spec("tensorboard") is not None,
         "logging.tensorboard needs TensorBoard: pip install 'archselect[tensorboard]'"),
        (cfg.data.batch_size > 0, "data.batch_size must be > 0"),
        (cfg.data.eval_batch_size > 0, "data.eval_batch_size must be > 0"),
        (0.0 < cfg.data.portion < 1.0, "data.portion must be between 0 and 1"),
        (cfg.data.subset is None or cfg.data.subset > 1, "data.subset must be at least 2"),
        (cfg.data.valid_size is None or cfg.data.valid_size >= 1, "data.valid_size must be at least 1"),
        (cfg.data.valid_size is None or cfg.data.portion == DataConfig.portion,
         "data.valid_size and data.portion both size search-valid: set one of them"),
        (not cfg.data.valid_balanced or cfg.data.valid_size is not None,
         "data.valid_balanced draws data.valid_size images per class: set data.valid_size too"),
        (cfg.data.workers >= 0, "data.workers must be >= 0"),
        (cfg.space.C > 0 and cfg.space.N > 0, "space.C and space.N must be positive"),
        (cfg.space.stem_multiplier > 0, "space.stem_multiplier must be positive"),
        (cfg.space.partial_channels > 0 and cfg.space.C % cfg.space.partial_channels == 0,
         "space.partial_channels must be positive and divide space.C"),
        (cfg.search.w_lr > 0 and cfg.search.w_lr_min >= 0, "search.w_lr must be > 0 and search.w_lr_min >= 0"),
        (cfg.search.checkpoint_every >= 0, "search.checkpoint_every must be >= 0"),
        (cfg.search.hessian_batches > 0 and cfg.search.hessian_iters > 0,
         "search.hessian_batches and search.hessian_iters must be > 0"),
        (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
         f"device {cfg.device!r}: choose auto, cpu, cuda or cuda:N"),
        (cfg.select.workers >= 1, f"select.workers must be >= 1, got {cfg.select.workers}"),
        (cfg.select.executor in EXECUTORS,
         f"select.executor {cfg.select.executor!r}: choose one of {', '.join(EXECUTORS)}"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(message)
    check_split(cfg)
    check_train(cfg)


# What a run may ask for. Beyond these a supernet or a dataset cannot be allocated on any machine archselect targets
# (or takes hours just to build); they are refused up front instead of failing, or never finishing, later.
LIMITS = {"space.C": 1024, "space.N": 64, "space.stem_multiplier": 16, "data.image_size": 1024,
          "data.batch_size": 65536, "data.eval_batch_size": 65536, "data.subset": 100_000_000,
          "data.valid_size": 100_000_000,
          "data.cutout": 1024, "search.epochs": 100_000, "threads": 1024, "train.C": 1024, "train.N": 64,
          "train.epochs": 100_000, "train.batch_size": 65536, "train.subset": 100_000_000, "train.cutout": 1024,
          "train.eval_every": 100_000, "search.checkpoint_every": 10 ** 9, "search.hessian_batches": 10_000,
          "search.hessian_iters": 10_000, "split.batches": 100_000, "select.workers": 4096,
          "data.workers": 1024, "train.lr_step": 100_000}
MAX_ACTIVATION_BYTES = 256 << 30  # a rough upper estimate of one search step's activations


# Folder datasets (data/imagefolder.py) and the side of their images when data.image_size is unset: the crop
# (data/folder_loader.DEFAULT_SIZE). Every in-memory dataset is at most 32 px.
DEFAULT_SIDES = {"imagenet": 224}


def image_side(cfg: RunConfig) -> int:
    return cfg.data.image_size or DEFAULT_SIDES.get(cfg.data.dataset, 32)


def estimated_activation_bytes(cfg: RunConfig, processes: int = 1) -> int:
    """A rough upper estimate of one search step's activation memory in one process (fp32, forward kept for
    backward) at the search's image side. Under torchrun each of the `processes` computes its share of the global
    batch (docs/scaling.md)."""
    side = image_side(cfg)
    batch = -(-cfg.data.batch_size // processes)
    if cfg.space.name == SPACE_MOBILENET:
        return 4 * batch * mobilenet_activations(cfg.space, side, mobilenet_blocks(cfg))
    # cell spaces: batch x channels x pixels for every op of every edge of every cell, at the largest resolution
    ops, edges = 8, 14
    cells = cfg.space.N * 3 + 2
    return 4 * batch * cfg.space.C * 4 * side * side * ops * edges * cells


def mobilenet_blocks(cfg: RunConfig) -> int:
    """Candidate blocks a search step keeps for backward per MobileNet layer: one on Once-for-All's elastic supernet
    (a sub-network is a cut of each layer's one shared block, and OFA's sub-networks of a step each run forward and
    backward in turn); two in ProxylessNAS' two-path mode (its memory saving); else all of them (the softmax
    mixture of the DARTS family, ProxylessNAS' `full` α step)."""
    s = cfg.search
    if cfg.space.elastic:
        return 1
    two_path = s.optimizer == "proxylessnas" and s.options.get("paths", "two") == "two"
    return 2 if two_path else len(MBCONV_OPS)


def mobilenet_activations(s: SpaceConfig, side: int, blocks: int) -> int:
    """Values one image keeps in the MobileNet supernet (spaces/mobilenet.py's layout) when each layer computes
    `blocks` of its candidates (the widest): each stores its expansion (at the layer's input resolution), depthwise
    and projection outputs (at its output resolution), each as conv, BN and activation output. Widths are rounded
    up to a multiple of 8, plus 8: an upper bound (measured: 1.2 GiB against 0.99 at width 1.0, 224 px, batch 2,
    all blocks)."""
    def width(c: int) -> int:
        return math.ceil(c * s.width_mult / 8) * 8 + 8

    small = s.resolution == 32  # CIFAR layout: stem and first stage keep stride 1
    side = side if small else -(-side // 2)
    total = 3 * (width(STEM_WIDTHS[0]) * 2 + width(STEM_WIDTHS[1])) * side * side
    expansions = sum(sorted(kernel_and_expansion(op)[1] for op in MBCONV_OPS)[-blocks:])
    c_in = width(STEM_WIDTHS[1])
    layers = s.stage_layers or [n for _, n, _ in STAGE_SPECS]
    for stage, ((w, _, stride), n) in enumerate(zip(STAGE_SPECS, layers)):
        c_out = width(w)
        for i in range(n):
            out = -(-side // (stride if i == 0 and not (small and stage == 0) else 1))
            total += 3 * (expansions * c_in * (side * side + out * out) + blocks * c_out * out * out)
            c_in, side = c_out, out
    return total


def check_ranges(cfg: RunConfig) -> None:
    for key, limit in LIMITS.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        if value is not None and value > limit:
            raise UserError(f"{key}={value} is beyond what archselect can allocate (at most {limit})")
    if cfg.threads is not None and cfg.threads < 1:
        raise UserError(f"threads must be a positive number of threads (or null for torch's default), got {cfg.threads}")
    if not 0 <= cfg.seed < 2 ** 32:
        raise UserError(f"seed must lie in [0, 2**32), got {cfg.seed}")
    if cfg.data.image_size is not None and cfg.data.image_size < 1:
        raise UserError("data.image_size must be positive")
    s = cfg.search
    if s.w_momentum < 0 or s.w_weight_decay < 0 or s.a_weight_decay < 0 or s.a_lr < 0 or s.grad_clip <= 0:
        raise UserError("search.w_momentum, search.w_weight_decay, search.a_weight_decay and search.a_lr must be "
                        ">= 0 and search.grad_clip > 0")
    if s.w_nesterov and s.w_momentum <= 0:
        raise UserError("search.w_nesterov needs search.w_momentum > 0")
    if not (0 <= s.a_beta1 < 1 and 0 <= s.a_beta2 < 1):
        raise UserError("search.a_beta1 and search.a_beta2 must lie in [0, 1)")
    t = cfg.train
    if t.momentum < 0 or t.weight_decay < 0 or (t.nesterov and t.momentum <= 0):
        raise UserError("train.momentum and train.weight_decay must be >= 0 (train.nesterov needs momentum > 0)")
    if cfg.data.dataset not in DEFAULT_SIDES:  # folder datasets: when a search builds its loaders (see there)
        check_search_memory(cfg)


def check_search_memory(cfg: RunConfig) -> None:
    """Refuse a search whose step would need more than MAX_ACTIVATION_BYTES. `check` applies it to every config of
    an in-memory dataset; a folder dataset's config (ImageNet) often only retrains, at 224 px, with search settings
    it never uses, so `components.loaders` applies it when a search or a selection starts."""
    launch = launch_env()
    processes = launch.world_size if launch else 1
    need = estimated_activation_bytes(cfg, processes)
    if need > MAX_ACTIVATION_BYTES:
        size = (f"space.width_mult={cfg.space.width_mult}" if cfg.space.name == SPACE_MOBILENET
                else f"space.C={cfg.space.C}, space.N={cfg.space.N}")
        raise UserError(f"{size}, data.batch_size={cfg.data.batch_size} and {image_side(cfg)} px images "
                        f"(data.image_size) need about {need / 2 ** 30:.0f} GiB of activations per search step"
                        f"{f' in each of {processes} processes' if processes > 1 else ''}, "
                        f"beyond the {MAX_ACTIVATION_BYTES >> 30} GiB archselect allows")


SPLIT_CHOICES = {
    "method": ("none", "gm", "exhaustive"), "distance": ("cos", "per-filter-cos", "mse"),
    "edge_criterion": ("auto", "cut", "within", "first"), "op_weight": ("auto", "one", "softmax"),
    "warmup_alpha": ("auto", "init", "equal", "learn"), "restart": ("auto", "final", "inherit"),
    "restart_schedule": ("auto", "total", "remaining"), "choose": ("supernet", "oracle"), "bn": ("train", "eval"),
    "shared": ("ops", "all"),
}
MAX_GROUPS = 64  # groups per split


def split_group_counts(s: SplitConfig) -> list[int]:
    """The group counts split.groups names (none for auto); an unknown word is an error naming the key."""
    if s.groups == "auto":
        return []
    if isinstance(s.groups, str):
        raise UserError(f"split.groups {s.groups!r}: choose auto, a number of groups, or one per split epoch "
                        f"(e.g. [2, 3])")
    return [s.groups] if isinstance(s.groups, int) else list(s.groups)


def check_split(cfg: RunConfig) -> None:
    s, e = cfg.split, cfg.split.epochs
    for key, allowed in SPLIT_CHOICES.items():
        if getattr(s, key) not in allowed:
            raise UserError(f"split.{key} {getattr(s, key)!r}: choose one of {', '.join(allowed)}")
    counts = split_group_counts(s)
    rules = [
        (all(2 <= g <= MAX_GROUPS for g in counts), f"split.groups must lie in [2, {MAX_GROUPS}]"),
        (not isinstance(s.groups, list) or len(s.groups) > 0, "split.groups needs at least one count"),
        (s.sizes is None or (min(s.sizes, default=0) >= 1 and all(g == len(s.sizes) for g in counts)),
         "split.sizes needs one size >= 1 per group (split.groups of them, at every split)"),
        (s.batches >= 1, "split.batches must be >= 1"),
    ]
    if s.method != "none":  # the schedule matters only to a split search (`archselect split RUN` ignores it)
        rules += [
            (len(e) > 0, "split.epochs needs at least one epoch"),
            (all(a < b for a, b in zip(e, e[1:])), "split.epochs must increase strictly"),
            (not e or 0 <= e[0] and e[-1] < cfg.search.epochs,
             f"split.epochs must lie in [0, search.epochs) = [0, {cfg.search.epochs})"),
            (s.edges is None or len(s.edges) >= len(e), "split.edges needs one edge per split epoch"),
            (not isinstance(s.groups, list) or len(s.groups) == len(e),
             f"split.groups lists {len(counts)} group counts; give one per split epoch ({len(e)})"),
            (not (s.method == "exhaustive" and s.edge_criterion == "within"),
             "split.edge_criterion within is meaningless for exhaustive splitting (no within-group distance); "
             "use first or cut"),
        ]
    for ok, message in rules:
        if not ok:
            raise UserError(message)


LR_SCHEDULES = ("cosine", "step")


def check_train(cfg: RunConfig) -> None:
    t = cfg.train
    rules = [
        (t.C > 0 and t.N > 0, "train.C and train.N must be positive"),
        (t.epochs >= 0, "train.epochs must be >= 0"),
        (t.batch_size > 0, "train.batch_size must be > 0"),
        (t.lr > 0 and t.lr_min >= 0, "train.lr must be > 0 and train.lr_min >= 0"),
        (t.lr_schedule in LR_SCHEDULES,
         f"train.lr_schedule {t.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}"),
        (0 < t.lr_gamma <= 1 and t.lr_step >= 1, "train.lr_gamma must lie in (0, 1] and train.lr_step be >= 1"),
        (t.grad_clip >= 0 and t.auxiliary_weight >= 0 and t.cutout >= 0 and t.eval_every >= 0,
         "train.grad_clip, train.auxiliary_weight, train.cutout and train.eval_every must be >= 0"),
        (0.0 <= t.drop_path < 1.0, "train.drop_path must lie in [0, 1)"),
        (0.0 <= t.label_smoothing < 1.0, "train.label_smoothing must lie in [0, 1)"),
        (t.subset is None or t.subset > 0, "train.subset must be positive"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(message)

def check_rules(options: Any, prefix: str, rules: list[tuple[bool, str, str]]) -> None:
    """Raise a UserError for the first (ok, key, allowed) rule that fails, naming the option and its value."""
    for ok, key, allowed in rules:
        if not ok:
            raise UserError(f"{prefix}.{key} must be {allowed}, got {getattr(options, key)!r}")


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# -- what a --resume may change ---------------------------------------------------------------------------------------

# Keys whose new value really takes effect when a search resumes: the optimizers and the schedule are rebuilt from
# them after the checkpoint is loaded (SearchOptimizer.apply_hyperparameters), the selection runs after the search,
# and the rest only say where and how to run. Anything else (space.*, data.subset, seed, search.optimizer, ...) is
# fixed by the checkpoint; changing it on --resume is refused rather than recorded without effect.
ENVIRONMENT_KEYS = ("device", "threads", "benchmark", "data.data_dir", "data.download", "data.workers",
                    "logging.tensorboard")
SEARCH_RESUMABLE = (*ENVIRONMENT_KEYS, "search.w_lr", "search.w_lr_min", "search.w_momentum", "search.w_weight_decay",
                    "search.w_nesterov", "search.grad_clip", "search.a_lr", "search.a_beta1", "search.a_beta2",
                    "search.a_weight_decay", "search.checkpoint_every", "search.hessian_eig", "search.hessian_batches",
                    "search.hessian_iters", "select.")
TRAIN_RESUMABLE = ENVIRONMENT_KEYS


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def changed_keys(old: RunConfig, new: RunConfig) -> list[str]:
    """The dotted keys whose values differ between two configs (inside mappings, key by key)."""
    a, b = _flat(to_dict(old)), _flat(to_dict(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, a) != b.get(k, b))


def resume_config(path: str | Path, overrides: list[str], allowed=SEARCH_RESUMABLE) -> RunConfig:
    """The stored config of a run with `overrides` applied, refusing (before anything is written) any override that
    changes a key a resume cannot honour."""
    stored = load_config(path)
    cfg = load_config(path, overrides)
    refused = [k for k in changed_keys(stored, cfg)
               if not any(k == a or (a.endswith(".") and k.startswith(a)) for a in allowed)]
    if refused:
        raise UserError(f"--resume cannot change {', '.join(refused)} (the checkpoint fixes it); it may change "
                        f"only {', '.join(a + '*' if a.endswith('.') else a for a in allowed)}; start a new run "
                        f"with --out instead")
    return cfg
