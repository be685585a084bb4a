"""Reading a checkpoint another program wrote, safely: `torch.load(weights_only=True)` only (tensors, numbers,
strings, lists, dicts; never an arbitrary object), every failure one line naming the file."""
from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import UserError


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(path: str | Path) -> Any:
    """The checkpoint's contents, on the CPU. A file that needs arbitrary unpickling (a pickled model object, an
    argparse Namespace, ...) is refused: save its state_dict (and α) instead."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise UserError(f"{path}: not a readable PyTorch checkpoint (damaged, or not a torch.save file)") from None
        raise UserError(f"{path}: refused: it holds a {found[1]} object, and reading it would need arbitrary "
                        f"unpickling (only tensors, numbers, strings, lists and dicts are read; save "
                        f"model.state_dict() and the α tensors instead)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


def state_dict_of(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model weights: ckpt["state_dict"] (the official search scripts' checkpoints), ckpt["model"], or the
    checkpoint itself when it is a plain state dict (DARTS' weights.pt)."""
    if isinstance(ckpt, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(ckpt.get(key), Mapping):
                return _tensors(ckpt[key], path)
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return _tensors(ckpt, path)
    keys = ", ".join(map(str, list(ckpt)[:6])) if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise UserError(f"{path}: no state dict found (expected a dict of tensors or a 'state_dict' entry; found {keys})")


def _tensors(d: Mapping, path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in d.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{path}: state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k).removeprefix("module.")] = v  # DataParallel / DDP wrappers prefix every key
    return out


def alphas_of(ckpt: Any, state: dict[str, torch.Tensor], names: tuple[str, ...], path: Path,
              alpha_file: str | Path | None = None) -> list[torch.Tensor]:
    """The architecture parameters, one matrix per name in `names` (cell types in the official order), from (first
    found): a separate file, ckpt["alpha"] (the official search scripts), or state dict entries named `names`
    (repos that register α as parameters). Entries found in the state dict are removed from it."""
    source = load(alpha_file) if alpha_file is not None else None
    if source is None and isinstance(ckpt, Mapping):
        source = ckpt.get("alpha", ckpt.get("alphas", ckpt.get("arch_parameters")))
    if source is None and all(n in state for n in names):
        source = [state[n] for n in names]
    for n in names:
        state.pop(n, None)
    if isinstance(source, torch.Tensor):
        source = [source] if source.dim() == 2 else list(source)
    if isinstance(source, Mapping):
        source = [source.get(n) for n in names]
    if not isinstance(source, (list, tuple)) or len(source) != len(names) or not all(
            isinstance(a, torch.Tensor) and a.dim() == 2 for a in source):
        where = alpha_file or path
        raise UserError(f"{where}: no architecture parameters found: expected {len(names)} matrix(es) "
                        f"({', '.join(names)}) in 'alpha', as state dict entries, or in a file given by alpha=FILE")
    return [a.detach() for a in source]
