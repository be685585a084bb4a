"""Search spaces: name -> a dataclass factory of supernets and discrete networks."""
from ..registry import Registry
from .nb201 import NB201Space

SPACES: Registry = Registry("search space")
SPACES.register("nb201")(NB201Space)
