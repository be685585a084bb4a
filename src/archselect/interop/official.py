"""Official supernet checkpoints as archselect supernets: a key-by-key renaming of each official layout onto an
archselect space (which computes the same function on the same weights), the space's size read from the shapes.

    darts-pt-nb201   DARTS-PT's NAS-Bench-201 supernet (`TinyNetworkDarts`), also GM-NAS' root supernet:
                     stem.*, lastact.*, classifier.*            -> body.<same>
                     cells.i.edges.<d><-<s>.k.op.{1,2}.X        -> body.layers.i.edges.<index of (s,d)>.ops.<op k>.{conv,bn}.X
                     cells.i.conv_{a,b}.op.{1,2}.X              -> body.layers.i.conv_{a,b}.{conv,bn}.X
                     cells.i.downsample.1.X                     -> body.layers.i.shortcut.1.X
                     α: checkpoint["alpha"] (or `_arch_parameters`), 6 x 5, edges in sorted "d<-s" order;
                     a GM-NAS sub-supernet's `enc` (the ops it keeps) becomes the mask
    darts            original DARTS `model_search.py` (8 ops with `none`, or 7 without) and the many repos reusing it
    darts-pt-darts   DARTS-PT's DARTS-space supernet, spaces s1-s5 (option search_space, default s5: DARTS without
                     `none`); s1 has its own two ops per edge (R-DARTS): archselect's darts-s1 (masks on the 7 ops)
                     stem.*, classifier.*                       -> body.<same>
                     cells.i.preprocess{0,1}.op.{1,2}.X         -> body.cells.i.pre{0,1}.{conv,bn}.X
                     cells.i.preprocess0.{conv_1,conv_2,bn}.X   -> body.cells.i.pre0.<same>.X   (FactorizedReduce)
                     cells.i._ops.e._ops.k.<op params>          -> body.cells.i.edges.e.ops.<op k>.<archselect names>
                     α: checkpoint["alpha"] = [normal, reduce] (or alphas_normal / alphas_reduce entries), 14 x K
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..arch import NB201_OPS
from ..errors import UserError
from ..genotype import EDGES as DARTS_EDGES, SPACE_OPS
from ..spaces.darts import S1_EDGE_OPS
from ..spaces.nb201 import EDGES as NB201_EDGES
from .checkpoints import alphas_of, state_dict_of


@dataclass
class Imported:
    """An official checkpoint renamed for an archselect space."""
    space: str                                   # archselect space name
    options: dict[str, Any]                      # space.* config values read from the shapes
    state: dict[str, torch.Tensor]               # archselect key -> tensor
    source_key: dict[str, str]                   # archselect key -> the official key it came from
    alphas: dict[str, torch.Tensor]              # cell type -> α over the space's ops (masked entries 0)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # cell type -> enabled ops (absent: all)
    in_channels: int = 3
    num_classes: int = 10
    epoch: int | None = None


class _Renamer:
    """Renames keys by ordered rules; an official key no rule knows is the first offending key."""

    def __init__(self, path: Path):
        self.path, self.state, self.source = path, {}, {}

    def put(self, official: str, target: str, value: torch.Tensor) -> None:
        self.state[target], self.source[target] = value, official

    def by_rules(self, key: str, value: torch.Tensor, rules: list, layout: str) -> None:
        """Rename `key` by the first of `rules` ((pattern, target from the match)) that matches it whole."""
        for rx, target in rules:
            if m := rx.fullmatch(key):
                self.put(key, target(m), value)
                return
        raise self.unknown(key, layout)

    def unknown(self, key: str, layout: str) -> UserError:
        return UserError(f"{self.path}: key {key!r} is not part of the {layout} layout (is this the right format?)")


def _shape(state: dict[str, torch.Tensor], key: str, path: Path, layout: str) -> torch.Size:
    if key not in state:
        raise UserError(f"{path}: key {key!r} is missing: not a {layout} checkpoint")
    return state[key].shape


def _epoch(ckpt: Any) -> int | None:
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    return int(epoch) if isinstance(epoch, (int, float)) else None


def _bn_flags(state: dict[str, torch.Tensor], pattern: str) -> dict[str, bool]:
    """bn_affine / bn_track of the candidate ops, read from which BN entries exist."""
    rx = re.compile(pattern)
    keys = [k for k in state if rx.search(k)]
    return {"bn_affine": any(k.endswith(".weight") for k in keys),
            "bn_track": any(k.endswith(".running_mean") for k in keys) or not keys}


# -- NAS-Bench-201 (DARTS-PT, GM-NAS) ----------------------------------------------------------------------------------

_NB201_RULES: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"(stem|lastact|classifier)\.(.+)"), lambda m: f"body.{m[1]}.{m[2]}"),
    (re.compile(r"cells\.(\d+)\.(conv_a|conv_b)\.op\.1\.(.+)"), lambda m: f"body.layers.{m[1]}.{m[2]}.conv.{m[3]}"),
    (re.compile(r"cells\.(\d+)\.(conv_a|conv_b)\.op\.2\.(.+)"), lambda m: f"body.layers.{m[1]}.{m[2]}.bn.{m[3]}"),
    (re.compile(r"cells\.(\d+)\.downsample\.1\.(.+)"), lambda m: f"body.layers.{m[1]}.shortcut.1.{m[2]}"),
]
_NB201_EDGE = re.compile(r"cells\.(\d+)\.edges\.(\d+)<-(\d+)\.(\d+)\.op\.([12])\.(.+)")


def darts_pt_nb201(ckpt: Any, path: Path, options: dict[str, Any]) -> Imported:
    layout = "darts-pt-nb201"
    state = state_dict_of(ckpt, path)
    r = _Renamer(path)
    for key, value in state.items():
        if key == "_arch_parameters":  # α registered as a parameter (GM-NAS)
            continue
        if m := _NB201_EDGE.fullmatch(key):
            cell, dst, src, k, part, rest = m.groups()
            e = NB201_EDGES.index((int(src), int(dst))) if (int(src), int(dst)) in NB201_EDGES else None
            if e is None or int(k) >= len(NB201_OPS) or not NB201_OPS[int(k)].startswith("nor_conv"):
                raise r.unknown(key, layout)
            r.put(key, f"body.layers.{cell}.edges.{e}.ops.{NB201_OPS[int(k)]}.{'conv' if part == '1' else 'bn'}."
                       f"{rest}", value)
            continue
        r.by_rules(key, value, _NB201_RULES, layout)
    (alpha,) = alphas_of(ckpt, state, ("_arch_parameters",), path, options.get("alpha"))
    if tuple(alpha.shape) != (len(NB201_EDGES), len(NB201_OPS)):
        raise UserError(f"{path}: α has shape {tuple(alpha.shape)}; the {layout} format knows the NAS-Bench-201 "
                        f"space (6 edges x 5 ops: {', '.join(NB201_OPS)})")
    stem = _shape(state, "stem.0.weight", path, layout)
    cells = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("cells.")), default=-1)
    if cells < 5 or (cells - 2) % 3:
        raise UserError(f"{path}: {cells} cells: a NAS-Bench-201 supernet has 3N + 2 (N cells per stage)")
    options = {"C": int(stem[0]), "N": (cells - 2) // 3, **_bn_flags(state, r"^cells\.\d+\.edges\..*\.op\.2\.")}
    return Imported("nb201", options, r.state, r.source, {"cell": alpha}, _gm_nas_mask(ckpt, alpha, path),
                    in_channels=int(stem[1]), num_classes=int(_shape(state, "classifier.weight", path, layout)[0]),
                    epoch=_epoch(ckpt))


def _gm_nas_mask(ckpt: Any, alpha: torch.Tensor, path: Path) -> dict[str, torch.Tensor]:
    """A GM-NAS sub-supernet (`supernets_<id>.pt`) saves `enc`, 1 where an op stays in the sub-supernet: its softmax
    runs over those ops alone and the others weigh 0, which is archselect's mask."""
    enc = ckpt.get("enc") if isinstance(ckpt, dict) else None
    if enc is None:
        return {}
    if not isinstance(enc, torch.Tensor) or enc.shape != alpha.shape or not bool((enc != 0).any(1).all()):
        raise UserError(f"{path}: 'enc' must be a {tuple(alpha.shape)} 0/1 tensor keeping at least one op per edge")
    return {"cell": enc != 0}


# -- DARTS space (DARTS, DARTS-PT) -------------------------------------------------------------------------------------

# The parameters inside each official op, as archselect names them (ops not listed have none, or the same names).
_OP_PARTS = {
    "sep_conv": {"op.1": "dw1", "op.2": "pw1", "op.3": "bn1", "op.5": "dw2", "op.6": "pw2", "op.7": "bn2"},
    "dil_conv": {"op.1": "dw", "op.2": "pw", "op.3": "bn"},
}

# DARTS-PT's --search_space -> (archselect space, per-edge op lists or None for the space's ops on every edge)
DARTS_PT_SPACES = {"s1": ("darts-s1", S1_EDGE_OPS), "s2": ("darts-s2", None), "s3": ("darts-s3", None),
                   "s4": ("darts-s4", None), "s5": ("darts-7", None)}

_DARTS_RULES: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"(stem|classifier)\.(.+)"), lambda m: f"body.{m[1]}.{m[2]}"),
    (re.compile(r"cells\.(\d+)\.preprocess([01])\.op\.1\.(.+)"), lambda m: f"body.cells.{m[1]}.pre{m[2]}.conv.{m[3]}"),
    (re.compile(r"cells\.(\d+)\.preprocess([01])\.op\.2\.(.+)"), lambda m: f"body.cells.{m[1]}.pre{m[2]}.bn.{m[3]}"),
    (re.compile(r"cells\.(\d+)\.preprocess0\.((?:conv_1|conv_2|bn)\..+)"), lambda m: f"body.cells.{m[1]}.pre0.{m[2]}"),
]
_DARTS_EDGE = re.compile(r"cells\.(\d+)\._ops\.(\d+)\._ops\.(\d+)\.(.+)")


def darts(ckpt: Any, path: Path, options: dict[str, Any]) -> Imported:
    """Original DARTS: every edge has the same ops; 8 columns of α (with `none`) -> darts, 7 -> darts-7."""
    state = state_dict_of(ckpt, path)
    _check_darts_keys(state, path, "darts")
    alphas = alphas_of(ckpt, state, _DARTS_ALPHAS, path, options.get("alpha"))
    by_width = {len(SPACE_OPS["darts"]): "darts", len(SPACE_OPS["darts-7"]): "darts-7"}
    space = by_width.get(alphas[0].shape[1])
    if space is None:
        raise UserError(f"{path}: α has {alphas[0].shape[1]} columns; the darts format knows 8 (DARTS' ops) or 7 "
                        f"(without none); for DARTS-PT's spaces s1-s4 use the darts-pt-darts format")
    return _darts_layout(ckpt, state, alphas, path, space, None, "darts")


def darts_pt_darts(ckpt: Any, path: Path, options: dict[str, Any]) -> Imported:
    name = str(options.get("search_space", "s5"))
    if name not in DARTS_PT_SPACES:
        raise UserError(f"search_space={name}: DARTS-PT's DARTS spaces are {', '.join(DARTS_PT_SPACES)}")
    space, per_edge = DARTS_PT_SPACES[name]
    state = state_dict_of(ckpt, path)
    _check_darts_keys(state, path, f"darts-pt-darts ({name})")
    alphas = alphas_of(ckpt, state, _DARTS_ALPHAS, path, options.get("alpha"))
    return _darts_layout(ckpt, state, alphas, path, space, per_edge, f"darts-pt-darts ({name})")


_DARTS_ALPHAS = ("alphas_normal", "alphas_reduce")


def _check_darts_keys(state: dict[str, torch.Tensor], path: Path, layout: str) -> None:
    """The first key that no DARTS rule knows, before anything else is read (a checkpoint of another format)."""
    r = _Renamer(path)
    for key in state:
        if key not in _DARTS_ALPHAS and not _DARTS_EDGE.fullmatch(key) and not any(
                rx.fullmatch(key) for rx, _ in _DARTS_RULES):
            raise r.unknown(key, layout)


def _darts_layout(ckpt: Any, state: dict[str, torch.Tensor], alphas: list[torch.Tensor], path: Path, space: str,
                  per_edge: dict[str, list[tuple[str, ...]]] | None, layout: str) -> Imported:
    ops = SPACE_OPS[space]
    edge_ops = per_edge or {ct: [ops] * len(DARTS_EDGES) for ct in ("normal", "reduce")}
    width = len(next(iter(edge_ops.values()))[0])
    for ct, a in zip(("normal", "reduce"), alphas):
        if tuple(a.shape) != (len(DARTS_EDGES), width):
            raise UserError(f"{path}: α of the {ct} cell has shape {tuple(a.shape)}; {layout} has "
                            f"{len(DARTS_EDGES)} edges x {width} ops")
    cells = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("cells.")), default=-1)
    if cells < 3:
        raise UserError(f"{path}: {cells} cells: not a DARTS supernet (it has at least 3)")
    reduce_at = {cells // 3, 2 * cells // 3}
    r = _Renamer(path)
    for key, value in state.items():
        if m := _DARTS_EDGE.fullmatch(key):
            cell, e, k, rest = int(m[1]), int(m[2]), int(m[3]), m[4]
            ct = "reduce" if cell in reduce_at else "normal"
            if e >= len(DARTS_EDGES) or k >= width:
                raise r.unknown(key, layout)
            op = edge_ops[ct][e][k]
            part, _, tail = rest.rpartition(".")  # 'op.3.running_mean', '1.running_var', 'conv_1.weight'
            table = _OP_PARTS.get(op[:8])
            renamed = table.get(part) if table else part
            if not renamed:
                raise r.unknown(key, layout)
            r.put(key, f"body.cells.{cell}.edges.{e}.ops.{op}.{renamed}.{tail}", value)
            continue
        r.by_rules(key, value, _DARTS_RULES, layout)
    stem = _shape(state, "stem.0.weight", path, layout)
    C = int(_shape(state, "cells.0.preprocess1.op.1.weight", path, layout)[0])
    if stem[0] % C:
        raise UserError(f"{path}: stem has {stem[0]} channels, not a multiple of C={C}")
    full, masks = {}, {}
    for ct, a in zip(("normal", "reduce"), alphas):
        full[ct], masks[ct] = _spread(a, edge_ops[ct], ops)
    options = {"C": C, "N": cells, "stem_multiplier": int(stem[0]) // C,
               **_bn_flags(state, r"^cells\.\d+\._ops\.\d+\._ops\.\d+\.(op\.[37]|1)\.")}
    return Imported(space, options, r.state, r.source, full, masks if per_edge else {}, in_channels=int(stem[1]),
                    num_classes=int(_shape(state, "classifier.weight", path, layout)[0]), epoch=_epoch(ckpt))


def _spread(alpha: torch.Tensor, edge_ops: list[tuple[str, ...]], ops: tuple[str, ...]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """α over each edge's own ops -> α over the space's ops (0 elsewhere) and the mask of the edge's ops."""
    full = torch.zeros(len(edge_ops), len(ops), dtype=alpha.dtype)
    mask = torch.zeros(len(edge_ops), len(ops), dtype=torch.bool)
    for e, names in enumerate(edge_ops):
        for k, name in enumerate(names):
            full[e, ops.index(name)] = alpha[e, k]
            mask[e, ops.index(name)] = True
    return full, mask


FORMATS: dict[str, Callable[[Any, Path, dict[str, Any]], Imported]] = {
    "darts-pt-nb201": darts_pt_nb201,
    "darts-pt-darts": darts_pt_darts,
    "darts": darts,
}
FORMAT_OPTIONS = {"darts-pt-nb201": ("alpha",), "darts-pt-darts": ("alpha", "search_space"), "darts": ("alpha",)}


_EDGE_KEY = re.compile(r"^body\.(?:cells|layers)\.(\d+)\.edges\.(\d+)\.ops\.([^.]+)\.")


def load_into(imported: Imported, supernet: Any, path: Path) -> None:
    """The imported weights, α and masks into an archselect supernet of the imported space. Every official tensor
    must find its place with its shape; every tensor of the supernet must come from the checkpoint, except those of
    ops the masks disable (s1's other ops), which keep their initial values and are never computed."""
    own = supernet.state_dict()
    for target, value in imported.state.items():
        source = imported.source_key[target]
        if target not in own:
            raise UserError(f"{path}: key {source!r} has no place in archselect's {imported.space} supernet "
                            f"(mapped to {target})")
        if own[target].shape != value.shape:
            raise UserError(f"{path}: key {source!r} has shape {tuple(value.shape)}; archselect's {target} has "
                            f"{tuple(own[target].shape)}")
    masks = {ct: imported.masks.get(ct, supernet.mask(ct)) for ct in supernet.cell_types}
    missing = [k for k in own if k not in imported.state and not k.startswith(("alphas.", "mask_"))
               and not _masked_out(k, masks, supernet)]
    if missing:
        raise UserError(f"{path}: the checkpoint lacks {len(missing)} tensor(s) of archselect's {imported.space} "
                        f"supernet, the first {missing[0]} (is this the right format and search space?)")
    state = dict(own)
    state.update({k: v.to(own[k].dtype) for k, v in imported.state.items()})
    for ct in supernet.cell_types:
        state[f"alphas.{ct}"] = imported.alphas[ct].to(own[f"alphas.{ct}"].dtype)
        state[f"mask_{ct}"] = masks[ct]
    supernet.load_state_dict(state)


def _masked_out(key: str, masks: dict[str, torch.Tensor], supernet: Any) -> bool:
    m = _EDGE_KEY.match(key)
    if m is None:
        return False
    ct = supernet.layer_cell_type(int(m[1]))
    return ct is not None and not bool(masks[ct][int(m[2]), supernet.op_names.index(m[3])])
