"""Supernet optimizers (the search stage's training rules). Importing this package registers every optimizer;
`get("darts")` is one's class, `names()` lists them."""
from . import darts, darts2, fixed_alpha, gumbel, rsps  # noqa: F401  (registration)
from . import shapley  # noqa: F401  (registration)
from . import beta_darts, darts_minus, drnas  # noqa: F401  (registration)
from . import proxylessnas  # noqa: F401  (registration)
from . import ofa  # noqa: F401  (registration)
from .base import OPTIMIZERS, SearchOptimizer

__all__ = ["OPTIMIZERS", "SearchOptimizer"]


def get(name: str) -> type[SearchOptimizer]:
    return OPTIMIZERS.get(name)


def names() -> list[str]:
    return OPTIMIZERS.names()
