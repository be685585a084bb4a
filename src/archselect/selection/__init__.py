"""Selectors. Importing this package registers every selector."""
from . import influence, magnitude  # noqa: F401  (registration)
from . import perturbation, random_paths, shapley, zero_cost  # noqa: F401  (registration)
from . import ofa_search  # noqa: F401  (registration)
from .base import SELECTORS, Selection, SelectionContext, Selector

__all__ = ["SELECTORS", "Selection", "SelectionContext", "Selector"]
