"""archselect: differentiable NAS in which architecture selection is a first-class, swappable stage.

A weight-sharing supernet is trained once; then any selector decides which operation each edge keeps, on the same
saved supernet, and the selectors are compared side by side. Every CLI command is a thin layer over one function
here (docs/api.md):

    import archselect as asel
    run = asel.search("configs/demo.yaml", out="runs/x", overrides={"search.epochs": 5})   # a Run
    sels = asel.select(run, ["magnitude", "perturbation", "shapley", "influence"])          # {name: Selection}
    print(asel.compare(sels))                                                               # the comparison table

Stages: search, search_seeds, select, compare, split, train, report, show, run_bench.
Supernets trained elsewhere: import_checkpoint (official checkpoints as a run), select_supernet (your own model,
through the protocol of archselect.interop.external, or darts_style for DARTS-style models).
Building blocks: spaces, optimizers, selectors (each: .get(name, ...), .names()), Architecture,
load_architecture, RunConfig, load_config, Run, Selection, SelectionContext, Comparison.
"""
from . import optimizers, spaces
from .catalog import selectors
from .arch import Architecture, load_architecture
from .config import RunConfig, load_config
from .interop.external import ExternalSupernet, darts_mixed_edges, darts_style
from .pipeline import (Run, compare, import_checkpoint, report, run_bench, search, search_seeds, select,
                       select_supernet, show, split, train)
from .selection import Selection, SelectionContext
from .selection.comparison import Comparison
from .version import __version__

__all__ = ["Architecture", "Comparison", "ExternalSupernet", "Run", "RunConfig", "Selection", "SelectionContext",
           "compare", "darts_mixed_edges", "darts_style", "import_checkpoint", "load_architecture", "load_config",
           "optimizers", "report", "run_bench", "search", "search_seeds", "select", "select_supernet", "selectors",
           "show", "spaces", "split", "train", "__version__"]
