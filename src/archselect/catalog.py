"""Selectors as building blocks for Python use: `selectors.get("shapley", permutations=5)` is a selector (its
`select(context)`), with its options validated exactly as in a config file; `selectors.names()` lists them. (Spaces and
optimizers: `archselect.spaces.get`, `archselect.optimizers.get`.)"""
from __future__ import annotations

from typing import Any, Callable

from .registry import Registry
from .selection import SELECTORS


class Catalog:
    def __init__(self, registry: Registry, make: Callable[[Any, dict[str, Any]], Any]):
        self.registry, self._make = registry, make

    def get(self, name: str, **options: Any) -> Any:
        return self._make(self.registry.get(name), options)

    def names(self) -> list[str]:
        return self.registry.names()

    def __contains__(self, name: str) -> bool:
        return name in self.registry

    def __repr__(self) -> str:
        return f"<{self.registry.kind}s: {', '.join(self.names())}>"


selectors = Catalog(SELECTORS, lambda cls, options: cls(options))
