"""Selector variants: a registered selector under a label of its own, with options of its own, so that one run (or
one bench) compares two settings of one method side by side, e.g. zero-cost scoring with two proxies:

    select:
      selectors: [magnitude, zc-synflow, zc-nwot]
      variants:
        zc-synflow: {selector: zero-cost, proxy: synflow}
        zc-nwot: {selector: zero-cost, proxy: nwot}

A variant's options are its base selector's `select.options` entry overlaid with its own. Its Selection, selection
file, table rows and plots carry the label; the Selection's `details.variant_of` names the base selector.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from ..errors import UserError
from .base import SELECTORS, Selector

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_variants(variants: Any) -> None:
    """One-line errors for a malformed `select.variants` (before any work)."""
    if not isinstance(variants, dict):
        raise UserError("select.variants must map labels to {selector: NAME, option: value, ...}")
    for label, spec in variants.items():
        where = f"select.variants.{label}"
        if not isinstance(label, str) or not LABEL.fullmatch(label):
            raise UserError(f"{where}: a label must be letters, digits, '.', '_', '+' or '-'")
        if label in SELECTORS:
            raise UserError(f"{where}: {label!r} is a registered selector; give the variant another label")
        if not isinstance(spec, dict) or not isinstance(spec.get("selector"), str):
            raise UserError(f"{where} must be a mapping with `selector: NAME` and the selector's options")
        if spec["selector"] in variants:
            raise UserError(f"{where}: a variant's selector must be a registered selector, not another variant")
        SELECTORS.get(spec["selector"])  # unknown base: one line naming the known selectors


def make_selector(name: str, options: dict[str, Any] | None = None, variants: dict[str, Any] | None = None
                  ) -> Selector:
    """The selector called `name`: a registered selector with `options[name]`, or the variant `name` of
    `variants`, its base selector's options overlaid with its own."""
    options, variants = options or {}, variants or {}
    if name not in variants:
        return SELECTORS.get(name)(options.get(name))
    check_variants({name: variants[name]})
    spec = dict(variants[name])
    base = spec.pop("selector")
    return SELECTORS.get(base)({**(options.get(base) or {}), **spec}, label=name)


def make_selectors(names: Iterable[str], select: Any) -> list[Selector]:
    """Every selector of `names` under a SelectConfig's options and variants (building one has no side effects, so
    an unknown name or bad option still fails before any work); every variant is checked, used or not."""
    check_variants(select.variants)
    return [make_selector(n, select.options, select.variants) for n in names]


def known(name: str, variants: dict[str, Any] | None = None) -> bool:
    return name in SELECTORS or name in (variants or {})
