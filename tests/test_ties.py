"""A selector whose best op ties on an edge says so (details and log): magnitude on a fixed-α supernet is arbitrary."""
import torch

from archselect.selection.base import tied_edges
from archselect.selection.magnitude import Magnitude
from archselect.spaces.darts import DARTSSpace

from test_evaluator import random_alphas, tiny_context


def test_magnitude_on_fixed_alpha_reports_every_edge_tied(caplog):
    ctx = tiny_context()
    with torch.no_grad():
        ctx.supernet.alphas["cell"].zero_()  # what search.optimizer=fixed-alpha leaves
    with caplog.at_level("INFO", logger="archselect"):
        sel = Magnitude().select(ctx)
    lines = [r.getMessage() for r in caplog.records]
    assert sel.details["tied_edges"] == {"cell": [0, 1, 2, 3, 4, 5]}
    assert any("ties on 6 edge(s)" in line for line in lines)
    random_alphas(ctx.supernet)
    assert "tied_edges" not in Magnitude().select(ctx).details


def test_ties_count_only_the_ops_derive_may_choose():
    space = DARTSSpace(C=4, N=3, in_channels=1, num_classes=4)
    net = space.supernet()
    rows = [[5.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]] * len(net.edges["normal"])  # `none` best, then a unique op
    scores = {"normal": rows, "reduce": [[0.0, 3.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0]] + rows[1:]}
    assert tied_edges(scores, net, chooses_none=False) == {"reduce": [0]}
    net.mask("reduce")[0, 2] = False  # a masked op is not a candidate
    assert tied_edges(scores, net, chooses_none=False) == {}
    assert tied_edges({"cell": [[1.0, 1.0, 0.5]]}, _Stub(), chooses_none=True) == {"cell": [0]}


class _Stub:
    op_names = ("none", "skip_connect", "avg_pool_3x3")

    def mask(self, ct):
        return torch.ones(1, 3, dtype=torch.bool)
