"""Supernet optimizers. Importing this package registers every optimizer."""
from . import darts, fixed_alpha  # noqa: F401  (registration)
from .base import OPTIMIZERS, SearchOptimizer

__all__ = ["OPTIMIZERS", "SearchOptimizer"]
