"""Search spaces: name -> a dataclass factory of supernets and discrete networks. `get("nb201", C=8, N=1)` is one
(its `supernet()`, `network(arch)`, `derive(scores)`); `names()` lists them."""
from ..registry import Registry
from .darts import DARTS_SPACES
from .mobilenet import MobileNetSpace
from .nb201 import NB201Space

SPACES: Registry = Registry("search space")
SPACES.register("nb201")(NB201Space)
SPACES.register("mobilenet")(MobileNetSpace)
for _space in DARTS_SPACES:  # darts, darts-7, darts-s1 .. darts-s4
    SPACES.register(_space.name)(_space)


def get(name: str, **options):
    """The space `name` with these options (its dataclass fields, e.g. C, N, in_channels, num_classes)."""
    return SPACES.get(name)(**options)


def names() -> list[str]:
    return SPACES.names()
