"""The MobileNet (ProxylessNAS) architecture text and its rules, and the space's layout numbers.

A MobileNet architecture names one op per searchable layer, stage by stage: six stages joined by `|`, the layers of a
stage by `,`, after the prefix `mobilenet:`,

    mobilenet:mb3_k3,zero,zero,zero|mb3_k5,mb3_k3,zero,zero|mb6_k7,mb3_k5,mb3_k5,mb3_k5|...|mb6_k7

An op `mbE_kK` is an inverted residual block of expansion E and kernel K; `zero` skips the layer (it becomes the
identity through its residual). A stage's first layer changes the width (or the stride), has no residual and so can
never be `zero`. The text carries the stage structure itself, so it parses strictly without knowing a space's size.
"""
from __future__ import annotations

from .errors import UserError

SPACE = "mobilenet"
PREFIX = SPACE + ":"
# α column order: ProxylessNAS' candidates (3x3, 5x5, 7x7 kernels x expansion 3, 6), then the skip.
MBCONV_OPS = ("mb3_k3", "mb6_k3", "mb3_k5", "mb6_k5", "mb3_k7", "mb6_k7")
OPS = (*MBCONV_OPS, "zero")
STAGES = 6
CELL_TYPES = tuple(f"stage{s}" for s in range(1, STAGES + 1))  # one cell type per stage; its edges are its layers
MAX_LAYERS = 16  # per stage
# The space's layout as numbers (spaces/mobilenet.py builds it from them; config bounds its memory with them):
# stem widths (first conv, expansion-1 block), (width, layers, first stride) per stage, head width.
STEM_WIDTHS = (32, 16)
STAGE_SPECS = ((24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))
HEAD_WIDTH = 1280


def kernel_and_expansion(op: str) -> tuple[int, int]:
    """`mb6_k5` -> (5, 6)."""
    e, k = op[2:].split("_k")
    return int(k), int(e)


def check_stages(stages: list[list[str]], text: str = "") -> None:
    """The rules every MobileNet architecture follows: six non-empty stages of known ops, none starting with `zero`."""
    where = f"bad MobileNet architecture {text!r}: " if text else "bad MobileNet architecture: "
    if len(stages) != STAGES:
        raise UserError(f"{where}expected {STAGES} stages joined by '|', got {len(stages)}")
    for s, ops in enumerate(stages, start=1):
        if not 1 <= len(ops) <= MAX_LAYERS:
            raise UserError(f"{where}stage {s} has {len(ops)} layers (1 to {MAX_LAYERS})")
        for op in ops:
            if op not in OPS:
                raise UserError(f"{where}unknown op {op!r} in stage {s}; choose one of: {', '.join(OPS)}")
        if ops[0] == "zero":
            raise UserError(f"{where}stage {s} starts with 'zero', but a stage's first layer changes the width or "
                            f"stride and cannot be skipped")


def parse_stages(text: str) -> list[list[str]]:
    """The op names of each stage of `mobilenet:...`, checked (see `check_stages`)."""
    if not isinstance(text, str):
        raise UserError("a MobileNet architecture must be text")
    s = text.strip()
    if not s.startswith(PREFIX):
        raise UserError(f"bad MobileNet architecture {text!r}: it starts with {PREFIX!r}")
    body = s[len(PREFIX):]
    stages = [[op.strip() for op in group.split(",")] if group.strip() else [] for group in body.split("|")]
    check_stages(stages, text)
    return stages


def format_stages(stages: list[list[str]]) -> str:
    return PREFIX + "|".join(",".join(ops) for ops in stages)
