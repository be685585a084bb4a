"""Search spaces: name -> a dataclass factory of supernets and discrete networks."""
from ..registry import Registry
from .darts import DARTS_SPACES
from .nb201 import NB201Space

SPACES: Registry = Registry("search space")
SPACES.register("nb201")(NB201Space)
for _space in DARTS_SPACES:  # darts, darts-7, darts-s2, darts-s3, darts-s4
    SPACES.register(_space.name)(_space)
