"""Selectors. Importing this package registers every selector."""
from . import magnitude  # noqa: F401  (registration)
from .base import SELECTORS, Selection, SelectionContext, Selector

__all__ = ["SELECTORS", "Selection", "SelectionContext", "Selector"]
