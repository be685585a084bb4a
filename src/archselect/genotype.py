"""The DARTS genotype text and the DARTS cell rules.

A DARTS cell has two input nodes (0: the output of the cell before the previous one, 1: the previous cell's output),
four intermediate nodes 2..5, each taking exactly two inputs from earlier nodes, and its output concatenates nodes
2..5. The genotype text, as DARTS and its successors print it,

    Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ...], normal_concat=range(2, 6),
             reduce=[...], reduce_concat=[2, 3, 4, 5])

lists two (op, input node) pairs per intermediate node: pair k feeds node 2 + k // 2. It is read by a small
recursive-descent parser (never `eval`), into the canonical Architecture (space "darts", cell types "normal" and
"reduce", edges sorted by (dst, src), concat (2, 3, 4, 5)). Every DARTS-family space (darts, darts-7, the R-DARTS
spaces) writes its architectures in this one space, "darts", since the cell format is the same.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

from .errors import UserError

SPACE = "darts"
CELL_TYPES = ("normal", "reduce")
INPUTS = 2                                  # input nodes 0 and 1
STEPS = 4                                   # intermediate nodes 2..5
NODES = tuple(range(INPUTS, INPUTS + STEPS))
CONCAT = NODES
# Supernet edge order: for each intermediate node, its inputs in increasing order (0->2, 1->2, 0->3, 1->3, 2->3, ...).
EDGES = tuple((src, dst) for dst in NODES for src in range(dst))

# The candidate ops of each DARTS-family space, in α column order. "darts" is original DARTS' 8 ops; "darts-7" drops
# `none`, as the official DARTS-PT, Shapley-NAS and GM-NAS repositories do; S2-S4 are R-DARTS' reduced spaces.
DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
SPACE_OPS = {
    "darts": DARTS_OPS,
    "darts-7": DARTS_OPS[1:],
    "darts-s1": DARTS_OPS[1:],  # two of them per edge (spaces/darts.py: S1_EDGE_OPS)
    "darts-s2": ("skip_connect", "sep_conv_3x3"),
    "darts-s3": ("none", "skip_connect", "sep_conv_3x3"),
    "darts-s4": ("noise", "sep_conv_3x3"),
}
# Ops a genotype may name: every family op but `none` (the genotype parse never keeps `none`).
GENOTYPE_OPS = DARTS_OPS[1:] + ("noise",)


# -- tokenizer --------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<int>[0-9]+)|(?P<str>'[^'\n]*'|\"[^\"\n]*\")"
                    r"|(?P<punct>[()\[\],=]))")


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, position) triples; kind is name, int, str, punct or end."""
    tokens, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            tokens.append(("end", "", pos))
            return tokens
        m = _TOKEN.match(text, pos)
        if m is None:
            what = "an unclosed quote" if text[pos] in "'\"" else f"unexpected character {text[pos]!r}"
            raise UserError(f"bad genotype: {what} at position {pos}")
        kind = m.lastgroup
        value = m.group(kind)
        tokens.append((kind, value[1:-1] if kind == "str" else value, m.start(kind)))
        pos = m.end()


class _Parser:
    """Genotype := 'Genotype' '(' field (',' field)* [','] ')' ;  field := NAME '=' value.
    Pairs lists: '[' ( '(' STR ',' INT ')' ),* ']' (a pair may also be a list); concat: range(INT, INT) or a list."""

    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self, kind: str, value: str | None = None, what: str | None = None) -> str:
        k, v, pos = self.tokens[self.i]
        if k != kind or (value is not None and v != value):
            want = what or (repr(value) if value is not None else kind)
            got = "the end of the text" if k == "end" else repr(v)
            raise UserError(f"bad genotype: expected {want} at position {pos}, got {got}")
        self.i += 1
        return v

    def at(self, kind: str, value: str | None = None) -> bool:
        k, v, _ = self.tokens[self.i]
        return k == kind and (value is None or v == value)

    def sequence(self, item, open_: str = "[") -> list:
        """Comma-separated items between brackets `open_` and its closer, trailing comma allowed."""
        close = "]" if open_ == "[" else ")"
        self.take("punct", open_)
        items = []
        while not self.at("punct", close):
            items.append(item())
            if not self.at("punct", close):
                self.take("punct", ",", what=f"',' or {close!r}")
        self.take("punct", close)
        return items

    def bracketed(self, item) -> list:
        return self.sequence(item, "(" if self.at("punct", "(") else "[")

    def integer(self) -> int:
        text = self.take("int", what="a non-negative integer")
        if len(text) > 6:
            raise UserError(f"bad genotype: node index {text[:12]}... is far too large")
        return int(text)

    def pair(self) -> tuple[str, int]:
        pos = self.peek()[2]
        items = self.bracketed(lambda: self.take("str", what="an op name in quotes") if not self.at("int")
                               else self.integer())
        if len(items) != 2 or not isinstance(items[0], str) or not isinstance(items[1], int):
            raise UserError(f"bad genotype: the pair at position {pos} must be ('op', input_node)")
        return items[0], items[1]

    def concat(self) -> list[int]:
        if self.at("name", "range"):
            self.take("name")
            bounds = self.sequence(self.integer, "(")
            if len(bounds) != 2:
                raise UserError("bad genotype: write a concat range as range(start, stop)")
            if not 0 <= bounds[1] - bounds[0] <= len(EDGES):  # never materialise a huge range
                raise UserError(f"bad genotype: concat range({bounds[0]}, {bounds[1]}) names no valid node list")
            return list(range(*bounds))
        return self.bracketed(self.integer)

    def genotype(self) -> dict[str, object]:
        self.take("name", "Genotype", what="'Genotype('")
        self.take("punct", "(")
        fields: dict[str, object] = {}
        while not self.at("punct", ")"):
            pos = self.peek()[2]
            key = self.take("name", what="a field name (normal, normal_concat, reduce, reduce_concat)")
            self.take("punct", "=")
            if key in CELL_TYPES:
                value: object = self.bracketed(self.pair)
            elif key in ("normal_concat", "reduce_concat"):
                value = self.concat()
            else:
                raise UserError(f"bad genotype: unknown field {key!r} at position {pos}; "
                                f"fields: normal, normal_concat, reduce, reduce_concat")
            if key in fields:
                raise UserError(f"bad genotype: field {key!r} given twice")
            fields[key] = value
            if not self.at("punct", ")"):
                self.take("punct", ",", what="',' or ')'")
        self.take("punct", ")")
        self.take("end", what="the end of the genotype")
        return fields


# -- Architecture <-> genotype ----------------------------------------------------------------------------------------

class GenotypeEdge(NamedTuple):
    src: int
    dst: int
    op: str


CellEdges = tuple[tuple[GenotypeEdge, ...], tuple[int, ...]]  # (edges by (dst, src), concat)


def parse_genotype_cells(text: str) -> dict[str, CellEdges]:
    """The cells of a DARTS genotype text (arch.parse_genotype makes them an Architecture); UserError naming the
    problem if it is not a valid DARTS cell pair."""
    if not isinstance(text, str):
        raise UserError("a genotype must be text")
    fields = _Parser(text).genotype()
    missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in fields]
    if missing:
        raise UserError(f"bad genotype: missing field {missing[0]!r}")
    cells = {}
    for ct in CELL_TYPES:
        pairs = fields[ct]
        if len(pairs) != 2 * STEPS:
            raise UserError(f"bad genotype: {ct} has {len(pairs)} (op, input) pairs; a DARTS cell needs "
                            f"{2 * STEPS}, two for each of its {STEPS} intermediate nodes")
        edges = [GenotypeEdge(src, INPUTS + k // 2, op) for k, (op, src) in enumerate(pairs)]
        cells[ct] = _check_cell(ct, edges, tuple(fields[f"{ct}_concat"]))
    return cells


def to_genotype_string(arch: Any) -> str:
    """The genotype text of a DARTS-space Architecture (pairs of a node ordered by input node)."""
    validate_darts(arch)
    parts = []
    for ct in CELL_TYPES:
        cell = arch.cell(ct)
        pairs = ", ".join(f"({e.op!r}, {e.src})" for e in sorted(cell.edges, key=lambda e: (e.dst, e.src)))
        parts.append(f"{ct}=[{pairs}], {ct}_concat=range({CONCAT[0]}, {CONCAT[-1] + 1})")
    return f"Genotype({', '.join(parts)})"


def validate_darts(arch: Any) -> None:
    """Check a DARTS Architecture (e.g. one read from JSON): cell types, ops, two inputs per node, concat."""
    if arch.space != SPACE:
        raise UserError(f"a {arch.space!r} architecture is not a DARTS-space architecture")
    if sorted(arch.cell_types) != sorted(CELL_TYPES):
        raise UserError(f"a DARTS architecture has exactly the cell types normal and reduce, "
                        f"got {list(arch.cell_types)}")
    for ct in CELL_TYPES:
        cell = arch.cell(ct)
        _check_cell(ct, list(cell.edges), cell.concat)


def _check_cell(ct: str, edges: list[Any], concat: tuple[int, ...]) -> CellEdges:
    """The canonical cell of these edges (anything with src, dst, op), or UserError naming the first rule they
    break."""
    seen = set()
    for e in edges:
        if e.op not in GENOTYPE_OPS:
            hint = "; a DARTS cell never keeps 'none'" if e.op == "none" else ""
            raise UserError(f"unknown DARTS operation {e.op!r} in the {ct} cell{hint}; choose one of: "
                            f"{', '.join(GENOTYPE_OPS)}")
        if e.dst not in NODES:
            raise UserError(f"{ct} cell: edge {e.src}->{e.dst} ends at node {e.dst}, but the intermediate nodes "
                            f"are {NODES[0]}..{NODES[-1]}")
        if not 0 <= e.src < e.dst:
            raise UserError(f"{ct} cell: node {e.dst} cannot take input from node {e.src} (only nodes 0..{e.dst - 1})")
        if (e.src, e.dst) in seen:
            raise UserError(f"{ct} cell: node {e.dst} takes node {e.src} twice; a DARTS cell has at most one op "
                            f"per (input, node) edge")
        seen.add((e.src, e.dst))
    for node in NODES:
        n = sum(1 for e in edges if e.dst == node)
        if n != 2:
            raise UserError(f"{ct} cell: node {node} has {n} inputs; every DARTS node takes exactly 2")
    if tuple(concat) != CONCAT:
        raise UserError(f"{ct} cell: concat {list(concat)} is not supported; this DARTS space concatenates all "
                        f"intermediate nodes, range({CONCAT[0]}, {CONCAT[-1] + 1})")
    return tuple(GenotypeEdge(e.src, e.dst, e.op) for e in sorted(edges, key=lambda e: (e.dst, e.src))), CONCAT
