"""The selection stage on one run directory: load its trained supernet, run selectors on it, write one Selection each
and the comparison (chosen architectures, agreement per edge, benchmark metrics, cost)."""
from __future__ import annotations

import copy
import logging

import torch

from ..components import eval_loader, loaders, space_of, to_device
from ..config import RunConfig
from ..environment import seed_everything
from ..errors import UserError
from ..files import atomic_write_json, read_json
from ..runs import RunDir
from ..scoring.workers import Workers, open_workers
from ..optimizers import OPTIMIZERS
from . import SELECTORS
from .variants import LABEL, make_selectors
from .base import Selection, SelectionContext
from .comparison import Comparison

log = logging.getLogger(__name__)


def build_context(cfg: RunConfig, run: RunDir, device: torch.device) -> SelectionContext:
    """The data, space and trained supernet of RUN, as its search saw them."""
    data = loaders(cfg, device)
    space = space_of(cfg, data.in_channels, data.num_classes)
    supernet = to_device(space.supernet(), device, cfg.search.channels_last)
    run.load_supernet(into=supernet)
    valid = eval_loader(cfg, data.valid.ds, device)
    optimizer = OPTIMIZERS.get(cfg.search.optimizer) if cfg.search.optimizer in OPTIMIZERS else None
    return SelectionContext(space, supernet, valid, data.train, device, cfg.seed, run.selections_dir, search=cfg.search,
                            optimizer=optimizer)


def run_selectors(cfg: RunConfig, run: RunDir, names: list[str], device: torch.device,
                  workers: Workers | None = None) -> dict[str, Selection]:
    """The selectors `names` on RUN's supernet, each from a freshly seeded RNG (so its result never depends on which
    ran before it), each Selection written to RUN/selections/. Independent evaluations run on `workers`, or on those
    `select.workers` and `select.executor` ask for."""
    selectors = make_selectors(names, cfg.select)  # fails on an unknown name before any work
    if workers is None:
        with open_workers(cfg.select.workers, cfg.select.executor, device=device) as opened:
            return run_selectors(cfg, run, names, device, opened)
    ctx = build_context(cfg, run, device)
    ctx.workers = workers
    reference = copy.deepcopy(ctx.supernet.state_dict())
    results = {}
    for selector in selectors:
        log.info(f"selecting with {selector.name} ...")
        seed_everything(cfg.seed)
        selection = selector.select(ctx)
        _assert_unchanged(ctx.supernet, reference, selector.name)
        atomic_write_json(run.selection_file(selector.name), selection.to_dict())
        c = selection.cost
        packed = f" in {c.passes} network passes" if c.shared_passes else ""
        log.info(f"  {selector.name}: {selection.architecture}  ({c.forward} forward passes{packed}, {c.seconds:.1f}s)")
        results[selector.name] = selection
    write_comparison(cfg, run, load_selections(run))
    return results


def _assert_unchanged(supernet, reference: dict[str, torch.Tensor], name: str) -> None:
    for k, v in supernet.state_dict().items():
        if not torch.equal(v, reference[k]):
            raise RuntimeError(f"selector {name} changed the shared supernet ({k}); selectors must work on a copy")


def load_selections(run: RunDir) -> dict[str, Selection]:
    """Every selection RUN holds, by selector name. A damaged file is a one-line error; a file that is not the
    selection of the registered selector (or variant of one) its name says is skipped with a warning (the name goes
    into output file names, so it must be one we know)."""
    out = {}
    for path in run.selection_files():
        selection = Selection.from_dict(read_json(path, "selection"))
        if selection.selector != path.stem or not _known(selection):
            log.warning(f"skipping {path}: not a selection of a known selector (it says {selection.selector!r})")
            continue
        out[selection.selector] = selection
    return out


def _known(selection: Selection) -> bool:
    if selection.selector in SELECTORS:
        return True
    base = selection.details.get("variant_of")
    return isinstance(base, str) and base in SELECTORS and bool(LABEL.fullmatch(selection.selector))


def selection_done(run: RunDir, name: str) -> bool:
    """A selection file that parses as a Selection of this selector (a damaged one is redone)."""
    path = run.selection_file(name)
    if not path.is_file():
        return False
    try:
        return Selection.from_dict(read_json(path, "selection")).selector == name
    except (UserError, KeyError, TypeError, ValueError):  # damaged (JSON, missing keys, wrong types): compute again
        return False


def write_comparison(cfg: RunConfig, run: RunDir, selections: dict[str, Selection]) -> Comparison:
    comparison = Comparison(selections, cfg.benchmark)
    atomic_write_json(run.comparison_file, comparison.to_dict())
    return comparison
