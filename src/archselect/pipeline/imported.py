"""Supernets trained elsewhere, into the pipeline.

    import_checkpoint   an official checkpoint (DARTS, DARTS-PT, GM-NAS) as an ordinary run directory: config,
                        manifest (source file and its sha256), supernet; then `select`, `report` and `show` as usual
    select_supernet     selectors on a supernet object of the caller's own (the protocol of interop/external.py, or
                        one of archselect's) with the caller's batches
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..components import search_data, space_of
from ..config import SearchConfig, build, check
from ..data import from_batches
from ..environment import choose_device, seed_everything
from ..errors import UserError
from ..interop import checkpoints, official
from ..interop.external import ExternalSpace, ExternalSupernet
from ..optimizers import OPTIMIZERS
from ..registry import Registry
from ..runs import discard_if_stillborn, manifest
from ..selection.variants import check_variants, make_selector
from ..selection.base import Selection, SelectionContext
from ..supernet import Supernet
from .stages import Overrides, Run, _started, _writing, new_run, override_list

log = logging.getLogger(__name__)

FORMATS: Registry = Registry("checkpoint format")
for _name, _convert in official.FORMATS.items():
    FORMATS.register(_name)(_convert)


def import_checkpoint(fmt: str, checkpoint: str | Path, out: str | Path | None = None, *,
                      overrides: Overrides | None = None) -> Run:
    """A run directory OUT holding the supernet of an official checkpoint (format `fmt`: darts-pt-nb201,
    darts-pt-darts, darts), read with `torch.load(weights_only=True)`. `overrides`: config keys (data.dataset=cifar10,
    search.optimizer=fixed-alpha, ...) and the format's options (alpha=FILE: α saved apart; search_space=s1..s5 for
    darts-pt-darts). The space's size comes from the checkpoint's shapes."""
    convert = FORMATS.get(fmt)
    path = Path(checkpoint)
    options, keys = _format_options(fmt, override_list(overrides))
    imported = convert(checkpoints.load(path), path, options)
    space_keys = [f"space.name={imported.space}", *(f"space.{k}={json.dumps(v)}" for k, v in imported.options.items())]
    run, cfg = new_run(None, out, space_keys + keys, prefix="import")
    check(cfg)
    with _started(cfg):
        train_set, _ = search_data(cfg)
        channels, classes = train_set.channels, train_set.num_classes
        if (channels, classes) != (imported.in_channels, imported.num_classes):
            raise UserError(f"the checkpoint's network takes {imported.in_channels}-channel images into "
                            f"{imported.num_classes} classes; data.dataset={cfg.data.dataset} has {channels}-channel images "
                            f"and {classes} classes: name the data it was trained on (data.dataset=..., data.data_dir=...)")
        supernet = space_of(cfg, channels, classes).supernet()
        official.load_into(imported, supernet, path)
    source = {"format": fmt, "source": str(path.resolve()), "sha256": checkpoints.sha256(path),
              "epoch": imported.epoch, "options": {k: str(v) for k, v in options.items()}}
    if "alpha" in options:
        source["alpha_sha256"] = checkpoints.sha256(Path(options["alpha"]))
    with discard_if_stillborn(run.path), _writing(run):
        run.write_config(cfg)
        run.record_manifest({**manifest(cfg.seed, "cpu"), "imported": source})
        run.save_supernet(supernet.state_dict())
        log.info(f"imported {path} ({fmt}) as a {imported.space} supernet (C={cfg.space.C}, N={cfg.space.N}) into "
                 f"{run.path}; select with: archselect select {run.path} --selector perturbation")
    return run


def _format_options(fmt: str, texts: list[str]) -> tuple[dict[str, str], list[str]]:
    """key=value texts -> (the format's options: keys without a dot, config keys)."""
    allowed = official.FORMAT_OPTIONS[fmt]
    options, keys = {}, []
    for text in texts:
        key, sep, value = text.partition("=")
        if "." in key or not sep:
            keys.append(text)
        elif key in allowed:
            options[key] = value
        else:
            raise UserError(f"{key}: not an option of the {fmt} format (it has: {', '.join(allowed)}); config keys "
                            f"have a dot, e.g. data.dataset=cifar10")
    return options, keys


def select_supernet(model: Any, selectors: str | Sequence[str], *, valid: Any, train: Any = None,
                    space: Any = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                    search: SearchConfig | Mapping[str, Any] | None = None, optimizer: str | None = None,
                    seed: int = 0, device: str = "cpu", variants: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> dict[str, Selection]:
    """Selectors on a supernet you built: a model implementing the protocol of `archselect.interop.external`
    (or wrapped by `darts_style`), or an archselect supernet with its `space`. `valid` (scoring) and `train`
    (fine-tuning, for perturbation) are iterables of (images, labels) batches, or archselect loaders. `options`:
    per selector, e.g. {"shapley": {"permutations": 5}}; `variants`: labelled settings of a selector, e.g.
    {"zc-synflow": {"selector": "zero-cost", "proxy": "synflow"}} (selection/variants.py); `search`: the
    fine-tuning's search.* settings; `optimizer`: the optimizer that trained α, when known (magnitude and perturbation read its capabilities). Nothing is written;
    each Selection is returned, in the order asked."""
    names = [selectors] if isinstance(selectors, str) else list(selectors)
    variants = {k: dict(v) for k, v in (variants or {}).items()}
    opts = {k: dict(v) for k, v in (options or {}).items()}
    check_variants(variants)
    chosen = [make_selector(n, opts, variants) for n in names]  # every name checked before any work
    dev = choose_device(device)
    if isinstance(model, Supernet) and not isinstance(model, ExternalSupernet):
        if space is None:
            raise UserError("an archselect supernet needs its space: select_supernet(net, ..., space=spaces.get(...))")
        net = model
    else:
        net = model if isinstance(model, ExternalSupernet) else ExternalSupernet(model)
        space = space or ExternalSpace.of(net.model)
    net = net.to(dev)
    search_cfg = search if isinstance(search, SearchConfig) else build(SearchConfig, dict(search or {}), "search")
    ctx = SelectionContext(space, net, _loader(valid, "valid", dev, seed + 1), _loader(train, "train", dev, seed),
                           dev, seed, search=search_cfg,
                           optimizer=OPTIMIZERS.get(optimizer) if optimizer is not None else None)
    out = {}
    for selector, name in zip(chosen, names):
        seed_everything(seed)
        out[name] = selector.select(ctx)
        log.info(f"  {name}: {out[name].architecture}")
    return out


def _loader(batches: Iterable | None, what: str, device: torch.device, seed: int):
    if batches is None or hasattr(batches, "batch"):  # None, or already a loader
        return batches
    return from_batches(batches, what, device=device, seed=seed, shuffle=what == "train", drop_last=what == "train")
