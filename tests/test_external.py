"""Selection on a supernet of the user's own: a DARTS-style model written in tests/official_layouts.py (not
archselect's spaces), adapted by `darts_style`, scores exactly as the same network built in archselect does, under
magnitude, perturbation (with fine-tuning), Shapley and influence; with the user's own batches."""
from __future__ import annotations

import pytest
import torch

import archselect as asel
from archselect.arch import EXTERNAL_SPACE, Architecture
from archselect.errors import UserError
from archselect.interop import checkpoints, official
from archselect.spaces.nb201 import EDGES

from official_layouts import NB201_OPS, TinyDarts, TinyNB201, randomise

pytestmark = pytest.mark.usefixtures("one_thread")

SELECTORS = ["magnitude", "perturbation", "shapley", "influence"]
OPTIONS = {"perturbation": {"tune_steps": 2, "valid_batches": 2},
           "shapley": {"permutations": 3, "batch_size": 8, "batches": 1},
           "influence": {"batches": 2}}


def batches(n=4, size=8, classes=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]


def archselect_twin(model, tmp_path):
    """The same network as archselect's NB201 supernet, through the darts-pt-nb201 mapping."""
    path = tmp_path / "twin.pth"
    state = {k: v for k, v in model.state_dict().items() if k != "arch"}
    torch.save({"state_dict": state, "alpha": [model.arch.detach()]}, path)
    imp = official.darts_pt_nb201(checkpoints.load(path), path, {})
    space = asel.spaces.get("nb201", C=4, N=1, in_channels=1, num_classes=4)
    net = space.supernet()
    official.load_into(imp, net, path)
    return net, space


def adapted(model):
    return asel.darts_style(model, op_names=NB201_OPS, edges={"cell": EDGES}, mixed_edges={"cell": model.mixed_edges()},
                            alphas={"cell": model.arch})


def test_four_selectors_score_as_on_archselects_own_network(tmp_path, float64):
    model = randomise(TinyNB201(C=4, N=1))
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches()
    ours = asel.select_supernet(adapted(model), SELECTORS, valid=data, train=data, options=OPTIONS)
    net, space = archselect_twin(model, tmp_path)
    theirs = asel.select_supernet(net, SELECTORS, valid=data, train=data, space=space, options=OPTIONS)
    for name in SELECTORS:
        a, b = ours[name], theirs[name]
        for ct in b.scores:
            assert torch.allclose(torch.tensor(a.scores[ct]), torch.tensor(b.scores[ct]), atol=1e-9, rtol=0), name
        assert [e.op for e in a.architecture.cell("cell").edges] == [e.op for e in b.architecture.cell("cell").edges]
        assert a.architecture.space == EXTERNAL_SPACE
    assert ours["perturbation"].cost.backward > 0  # it did fine-tune
    assert ours["influence"].stderr is not None
    for k, v in model.state_dict().items():  # the user's model is never changed
        assert torch.equal(v, reference[k]), k


def test_darts_mixed_edges_and_a_derive_of_ones_own(float64):
    model = randomise(TinyDarts(C=4, layers=5))
    darts = asel.spaces.get("darts", C=4, N=5, in_channels=1, num_classes=4)
    net = asel.darts_style(model, op_names=darts.op_names, edges={ct: darts.edges(ct) for ct in darts.cell_types},
                           mixed_edges=asel.darts_mixed_edges(model),
                           alphas={"normal": model.alphas_normal, "reduce": model.alphas_reduce}, derive=darts.derive)
    sel = asel.select_supernet(net, "magnitude", valid=batches())["magnitude"]
    expected = darts.derive({"normal": torch.softmax(model.alphas_normal, -1),
                             "reduce": torch.softmax(model.alphas_reduce, -1)})
    assert sel.architecture == expected
    wrapped = asel.ExternalSupernet(net)
    assert not any(p is model.alphas_normal for p in wrapped.weight_parameters())
    assert len(wrapped.weight_parameters()) == len(list(model.parameters())) - 2  # α left out of the weights


def test_what_is_missing_is_one_line(float64):
    model = randomise(TinyNB201(C=4, N=1))
    with pytest.raises(UserError, match="does not implement the supernet protocol: it lacks cell_types"):
        asel.select_supernet(model, "magnitude", valid=batches())
    with pytest.raises(UserError, match="needs training batches"):
        asel.select_supernet(adapted(model), "perturbation", valid=batches())
    with pytest.raises(UserError, match="valid: batch 1 is not an"):
        asel.select_supernet(adapted(model), "magnitude", valid=[batches()[0], "x"])
    with pytest.raises(UserError, match="not a multiple of its 6 edges"):
        asel.darts_style(model, op_names=NB201_OPS, edges={"cell": EDGES}, mixed_edges={"cell": model.mixed_edges()[:5]},
                         alphas={"cell": model.arch})
    sel = asel.select_supernet(adapted(model), "perturbation", valid=batches(),
                               options={"perturbation": {"tune_epochs": 0, "valid_batches": 1}})["perturbation"]
    assert Architecture.from_dict(sel.architecture.to_dict()) == sel.architecture  # an external architecture saves
