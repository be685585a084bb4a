"""Supernet optimizers. Importing this package registers every optimizer."""
from . import darts, darts2, fixed_alpha, gumbel, rsps  # noqa: F401  (registration)
from . import shapley  # noqa: F401  (registration)
from .base import OPTIMIZERS, SearchOptimizer

__all__ = ["OPTIMIZERS", "SearchOptimizer"]
