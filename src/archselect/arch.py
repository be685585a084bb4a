"""Architecture: the one canonical, JSON-serialisable description of a discrete cell architecture.

A cell is a DAG: each `Edge` carries one operation from node `src` to node `dst`. An `Architecture` holds one `Cell` per
cell type ("cell" for NAS-Bench-201; "normal" and "reduce" for the DARTS space) and the name of its search space.
Text codecs (the NAS-Bench-201 arch string here, the DARTS genotype in `genotype.py`, the MobileNet layer list in
`mobilenet_text.py`, where each stage is a cell whose edges i->i+1 are its layers) parse with a grammar and never
`eval` anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import read_json
from .genotype import SPACE as DARTS_SPACE
from .genotype import parse_genotype_cells, to_genotype_string, validate_darts
from . import mobilenet_text as mbtext

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NB201_NODES = 4  # node 0 is the cell input, node 3 its output

FORMAT_VERSION = 1
EXTERNAL_SPACE = "external"  # the architectures of a user's own supernet (interop/external.py)


def edge_name(src: int, dst: int) -> str:
    """An edge as users read it, everywhere: source->destination node, '0->3'."""
    return f"{src}->{dst}"


def edge_label(index: int, src: int, dst: int) -> str:
    """An edge where its index matters too (a config key such as split.edges takes indices): 'edge 3 (0->3)'."""
    return f"edge {index} ({edge_name(src, dst)})"


@dataclass(frozen=True)
class Edge:
    src: int
    dst: int
    op: str


@dataclass(frozen=True)
class Cell:
    edges: tuple[Edge, ...]
    concat: tuple[int, ...] = ()  # nodes joined into the cell output (DARTS); empty means "the last node" (NB201)

    def op_on(self, src: int, dst: int) -> str | None:
        for e in self.edges:
            if (e.src, e.dst) == (src, dst):
                return e.op
        return None


@dataclass(frozen=True)
class Architecture:
    space: str
    cells: tuple[tuple[str, Cell], ...]

    # -- access ---------------------------------------------------------------------------------------------------
    def cell(self, cell_type: str) -> Cell:
        for name, c in self.cells:
            if name == cell_type:
                return c
        raise KeyError(cell_type)

    @property
    def cell_types(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.cells)

    # -- JSON -----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "space": self.space,
            "cells": {
                name: {"edges": [[e.src, e.dst, e.op] for e in c.edges], "concat": list(c.concat)}
                for name, c in self.cells
            },
            "text": str(self),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Architecture":
        try:
            if not isinstance(d, dict) or not isinstance(d.get("cells"), dict) or not isinstance(d.get("space"), str):
                raise ValueError("expected an object with 'space' and 'cells'")
            cells = []
            for name, c in d["cells"].items():
                edges = tuple(Edge(int(s), int(t), str(op)) for s, t, op in c["edges"])
                cells.append((str(name), Cell(edges, tuple(int(n) for n in c.get("concat", ())))))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as e:
            raise UserError(f"not an archselect architecture: {e}") from None
        arch = cls(d["space"], tuple(cells))
        validate(arch)
        return arch

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise UserError(f"architecture file is not valid JSON: {e}") from None
        except RecursionError:
            raise UserError("architecture file is not valid JSON: nested too deeply") from None

    # -- NAS-Bench-201 arch string -----------------------------------------------------------------------------------
    @classmethod
    def from_nb201_string(cls, text: str) -> "Architecture":
        return parse_nb201(text)

    def to_nb201_string(self) -> str:
        if self.space != "nb201":
            raise UserError(f"a {self.space} architecture has no NAS-Bench-201 string")
        cell = self.cell("cell")
        groups = []
        for dst in range(1, NB201_NODES):
            ops = [f"{cell.op_on(src, dst)}~{src}" for src in range(dst)]
            groups.append("|" + "|".join(ops) + "|")
        return "+".join(groups)

    def __str__(self) -> str:
        if self.space == EXTERNAL_SPACE:
            return "; ".join(f"{ct}: " + " ".join(f"{e.src}->{e.dst} {e.op}" for e in c.edges) for ct, c in self.cells)
        if self.space == mbtext.SPACE:
            return mbtext.format_stages(mobilenet_stages(self))
        return self.to_nb201_string() if self.space == "nb201" else to_genotype_string(self)


def parse_nb201(text: str) -> Architecture:
    """Parse `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` strictly: three node groups, node i has one edge from each j < i."""
    if not isinstance(text, str):
        raise UserError("NAS-Bench-201 arch string must be text")
    s = text.strip()
    groups = s.split("+")
    if len(groups) != NB201_NODES - 1:
        raise UserError(f"bad NAS-Bench-201 arch string {text!r}: expected 3 node groups joined by '+', got {len(groups)}")
    edges = []
    for dst, group in enumerate(groups, start=1):
        if len(group) < 2 or not (group.startswith("|") and group.endswith("|")):
            raise UserError(f"bad NAS-Bench-201 arch string {text!r}: node {dst} group {group!r} must be '|op~j|...|'")
        items = group[1:-1].split("|")
        if len(items) != dst:
            raise UserError(f"bad NAS-Bench-201 arch string {text!r}: node {dst} needs {dst} inputs, got {len(items)}")
        seen = set()
        for item in items:
            op, sep, src_text = item.partition("~")
            if not sep or not _is_ascii_int(src_text, 3) or src_text != str(int(src_text)):
                raise UserError(f"bad NAS-Bench-201 arch string {text!r}: {item!r} is not 'op~node'")
            src = int(src_text)
            if op not in NB201_OPS:
                raise UserError(f"unknown NAS-Bench-201 operation {op!r} in {text!r}; choose one of: {', '.join(NB201_OPS)}")
            if src >= dst:
                raise UserError(f"bad NAS-Bench-201 arch string {text!r}: node {dst} cannot take input from node {src}")
            if src in seen:
                raise UserError(f"bad NAS-Bench-201 arch string {text!r}: node {dst} takes node {src} twice")
            seen.add(src)
            edges.append(Edge(src, dst, op))
    edges.sort(key=lambda e: (e.dst, e.src))
    return Architecture("nb201", (("cell", Cell(tuple(edges))),))


def parse_genotype(text: str) -> Architecture:
    """The Architecture of a DARTS genotype text (genotype.py holds the grammar and the DARTS cell rules)."""
    cells = parse_genotype_cells(text)
    return Architecture(DARTS_SPACE, tuple((ct, Cell(tuple(Edge(*e) for e in edges), concat))
                                           for ct, (edges, concat) in cells.items()))


def parse_mobilenet(text: str) -> Architecture:
    """The Architecture of `mobilenet:...` (mobilenet_text.py holds the grammar and rules): one cell per stage."""
    return mobilenet_architecture(mbtext.parse_stages(text))


def mobilenet_architecture(stages: list[list[str]]) -> Architecture:
    """Stage s becomes cell `stage{s}`, its layer i the edge i->i+1."""
    return Architecture(mbtext.SPACE, tuple((ct, Cell(tuple(Edge(i, i + 1, op) for i, op in enumerate(ops))))
                                            for ct, ops in zip(mbtext.CELL_TYPES, stages)))


def mobilenet_stages(arch: Architecture) -> list[list[str]]:
    """Each stage's op names, layer by layer; an Architecture that is not a chain of layers per stage is refused."""
    if arch.cell_types != mbtext.CELL_TYPES:
        raise UserError(f"a mobilenet architecture has the cell types {', '.join(mbtext.CELL_TYPES)} in this order")
    stages = []
    for ct, cell in arch.cells:
        if [(e.src, e.dst) for e in cell.edges] != [(i, i + 1) for i in range(len(cell.edges))] or cell.concat:
            raise UserError(f"a mobilenet architecture's {ct} must list its layers as edges 0->1, 1->2, ... in order")
        stages.append([e.op for e in cell.edges])
    return stages


def _is_ascii_int(text: str, max_digits: int) -> bool:
    """Only 0-9 (str.isdigit also accepts '²' and Arabic-Indic digits, which int() rejects or reads as numbers)."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def parse_index(spec: str) -> int | None:
    """A benchmark index written in ASCII digits (at most 12), else None: the text is an architecture instead."""
    s = spec.strip()
    return int(s) if _is_ascii_int(s, 12) else None


MAX_ARCH_TEXT = 100_000  # an architecture string or file beyond this is not one


def validate(arch: Architecture) -> None:
    """Check an Architecture built from JSON against its space's rules (ops, node references)."""
    if arch.space == "nb201":
        if arch.cell_types != ("cell",):
            raise UserError("a nb201 architecture has exactly one cell type, 'cell'")
        parse_nb201(arch.to_nb201_string())  # re-parse: checks ops and that every edge is present once
        if len(arch.cell("cell").edges) != 6:
            raise UserError("a nb201 architecture has exactly 6 edges")
        return
    if arch.space == DARTS_SPACE:  # every DARTS-family space (darts, darts-7, darts-s1..s4) writes "darts" cells
        validate_darts(arch)
        return
    if arch.space == mbtext.SPACE:
        mbtext.check_stages(mobilenet_stages(arch))
        return
    if arch.space == EXTERNAL_SPACE:  # a supernet of the user's own (interop/external.py): no rules to check
        return
    raise UserError(f"unknown architecture space {arch.space!r}; known: nb201, darts, {mbtext.SPACE}, {EXTERNAL_SPACE}")


def load_architecture(spec: str) -> Architecture:
    """An architecture from a JSON file path, a NAS-Bench-201 string, a DARTS genotype or a MobileNet layer list."""
    s = spec.strip()
    if len(s) > MAX_ARCH_TEXT:
        raise UserError(f"an architecture of {len(s)} characters is too long (at most {MAX_ARCH_TEXT})")
    if s.startswith("|"):
        return parse_nb201(s)
    if s.startswith("Genotype"):
        return parse_genotype(s)
    if s.startswith(mbtext.PREFIX):
        return parse_mobilenet(s)
    shown = spec if len(spec) <= 80 else spec[:77] + "..."
    path = Path(spec)
    try:
        is_file = "\0" not in spec and path.is_file()
    except (OSError, ValueError):  # a name longer than the file system allows, ...
        is_file = False
    if not is_file:
        raise UserError(f"{shown!r} is neither an architecture file, a NAS-Bench-201 string, a genotype nor "
                        f"a {mbtext.PREFIX}... layer list")
    try:
        obj = read_json(path, "architecture file")
    except UserError as e:
        raise UserError(str(e).replace("is damaged or not JSON", "is not valid JSON")) from None
    if isinstance(obj, dict) and "architecture" in obj:  # a result.json or selection file
        obj = obj["architecture"]
    return Architecture.from_dict(obj)
