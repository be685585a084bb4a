"""DrNAS, β-DARTS and DARTS− (issue #16): each method's maths on hand-made inputs, two steps on a tiny NB201 supernet
and on the DARTS space, and every selector on each one's saved supernet. Kill/resume: tests/test_kill_search.py."""
import math

import pytest
import torch
import torch.nn.functional as F

import archselect as asel
from archselect.errors import UserError
from archselect.optimizers import OPTIMIZERS
from archselect.optimizers.beta_darts import beta_loss
from archselect.optimizers.darts_minus import aux_beta, with_aux_skip
from archselect.optimizers.drnas import concentration, dirichlet_sample
from archselect.spaces import SPACES
from archselect.spaces.mixed import MixedEdge
from archselect.supernet import make_plan

from conftest import tiny_idx_dir
from test_optimizers import batch, make, tiny_supernet

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ["drnas", "beta-darts", "darts-minus"]


# -- β-DARTS -----------------------------------------------------------------------------------------------------------

def test_beta_loss_is_the_mean_smooth_max_and_its_gradient_the_softmax_over_edges():
    alpha = torch.tensor([[0.0, math.log(3.0), 5.0], [1.0, 1.0, -7.0], [2.0, 0.0, 0.0]], dtype=torch.float64,
                         requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])  # edge 2: no op left
    value = beta_loss(alpha, mask)
    by_hand = (math.log(1 + 3) + math.log(2 * math.e + math.exp(-7))) / 2
    assert value.item() == pytest.approx(by_hand, rel=1e-14)
    value.backward()
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, :2] = torch.tensor([0.25, 0.75])
    expected[1] = torch.softmax(alpha[1].detach(), 0)
    assert torch.allclose(alpha.grad, expected / 2, atol=1e-15)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_beta_weight_rises_linearly_and_its_position_is_checkpointed():
    opt = make("beta-darts", tiny_supernet(), epochs=4, lambda_max=50.0)
    weights = []
    for e in range(4):
        weights.append(opt.step(batch(1), batch(2), e)["beta_weight"])
        opt.end_epoch(e)
    assert weights == [0.0, 12.5, 25.0, 37.5]  # official NB201: 50 · epoch / 100 with 100 epochs
    restored = make("beta-darts", tiny_supernet(), epochs=4)
    restored.load_state_dict(opt.state_dict())
    assert restored.weight == 50.0
    with pytest.raises(UserError, match="lambda_max"):
        make("beta-darts", tiny_supernet(), lambda_max=-1.0)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_beta_darts_alpha_step_adds_the_weighted_regulariser_gradient():
    """Against plain DARTS on the same α and batch: the difference of the α gradients is λ·softmax(α)/E."""
    darts, beta = tiny_supernet(torch.float64), tiny_supernet(torch.float64)
    opt = make("beta-darts", beta, epochs=4)
    opt.end_epoch(0)  # λ = 12.5
    x, y = batch(2, torch.float64)
    grads = []
    g_darts = torch.autograd.grad(F.cross_entropy(darts(x, darts.mixing_weights()), y), darts.arch_parameters())[0]
    opt.a_optimizer.step = lambda: grads.append(beta.alphas["cell"].grad.clone())  # capture, do not step
    opt.arch_step((x, y), 1)
    assert torch.allclose(grads[0] - g_darts, 12.5 * torch.softmax(beta.alphas["cell"].detach(), -1) / 6, atol=1e-12)


# -- DrNAS -------------------------------------------------------------------------------------------------------------

def test_dirichlet_samples_lie_on_the_simplex_of_the_enabled_ops_with_the_dirichlet_mean():
    torch.manual_seed(0)
    alpha = torch.tensor([[1.0, 0.0, -1.0, 2.0]]).expand(20000, 4)
    mask = torch.ones(20000, 4, dtype=torch.bool)
    w = dirichlet_sample(alpha, mask)
    assert torch.allclose(w.sum(1), torch.ones(20000), atol=1e-6) and (w >= 0).all()
    beta = concentration(alpha[0])
    assert torch.allclose(beta, torch.tensor([2.0, 1.0, math.exp(-1.0), 3.0]))  # ELU + 1
    assert torch.allclose(w.mean(0), beta / beta.sum(), atol=0.01)
    mask[:, 1] = False  # disabled: 0, the rest Dir(β without it) (aggregation property)
    w = dirichlet_sample(alpha, mask)
    assert (w[:, 1] == 0).all() and torch.allclose(w.sum(1), torch.ones(20000), atol=1e-6)
    rest = beta[[0, 2, 3]]
    assert torch.allclose(w.mean(0)[[0, 2, 3]], rest / rest.sum(), atol=0.01)
    empty = torch.zeros(1, 4, dtype=torch.bool)
    assert (dirichlet_sample(alpha[:1], empty) == 0).all()


def test_dirichlet_sample_carries_a_pathwise_gradient_to_alpha():
    """d E[w_k]/dα: the mean of the reparameterised gradients matches the gradient of the Dirichlet mean."""
    torch.manual_seed(1)
    alpha = torch.tensor([0.5, -0.5, 0.0], requires_grad=True)
    n = 20000
    w = dirichlet_sample(alpha.expand(n, 3), torch.ones(n, 3, dtype=torch.bool))
    (w[:, 0].mean()).backward()
    mean = lambda a: (concentration(a) / concentration(a).sum())[0]  # noqa: E731
    exact = torch.autograd.functional.jacobian(mean, alpha.detach())
    assert torch.allclose(alpha.grad, exact, atol=0.01)


def test_drnas_samples_weights_afresh_in_every_step_and_leaves_selection_to_softmax_alpha():
    sn = tiny_supernet()
    opt = make("drnas", sn)
    a, b = opt.train_weights()["cell"], opt.train_weights()["cell"]
    assert not torch.equal(a, b) and torch.allclose(a.sum(1), torch.ones(6))
    assert not OPTIMIZERS.get("drnas").alpha_by_gradient and OPTIMIZERS.get("drnas").trains_alpha


# -- DARTS− ------------------------------------------------------------------------------------------------------------

def test_aux_skip_adds_exactly_beta_times_the_edge_input():
    """One NB201 edge: its output with the auxiliary weights is its plain output plus β·x."""
    sn = tiny_supernet(torch.float64)
    edge = next(m for m in sn.modules() if isinstance(m, MixedEdge))  # the first cell's edge 1<-0
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    w = torch.softmax(torch.randn(1, 5, dtype=torch.float64), -1)
    skip = sn.op_names.index("skip_connect")
    mask = torch.ones(1, 5, dtype=torch.bool)
    plain = edge(x, lambda: F.relu(x), make_plan(w, mask, sn.op_names)[0])
    aux = edge(x, lambda: F.relu(x), make_plan(with_aux_skip(w, skip, 0.3), mask, sn.op_names)[0])
    assert torch.allclose(aux, plain + 0.3 * x, atol=1e-14)
    assert with_aux_skip(w, skip, 0.0) is w  # β = 0: the plain weights, nothing added


def test_aux_skip_schedules():
    assert [aux_beta(t, 4, 1.0, "linear") for t in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert aux_beta(49, 50, 1.0, "linear") == pytest.approx(0.02)  # official: 1/T in the last epoch
    assert [aux_beta(t, 4, 1.0, "cosine") for t in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0])
    assert aux_beta(3, 4, 0.7, "none") == 0.7


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_darts_minus_weights_carry_the_decaying_skip_and_alpha_gradient():
    sn = tiny_supernet()
    opt = make("darts-minus", sn, epochs=4)
    skip = sn.op_names.index("skip_connect")
    plain = sn.mixing_weights(detach=True)["cell"]
    assert torch.allclose(opt.train_weights()["cell"] - plain, F.one_hot(torch.tensor(skip), 5).float().expand(6, 5))
    for e in range(2):
        opt.end_epoch(e)
    assert opt.beta == 0.5 and opt.step(batch(1), batch(2), 2)["aux_skip"] == 0.5
    assert opt.weights(detach=False)["cell"].requires_grad
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0, skip] = False  # a masked skip_connect gets no auxiliary skip
    sn.set_mask("cell", mask)
    assert opt.train_weights()["cell"][0, skip] == 0


def test_darts_minus_options_and_spaces_without_skip_are_user_errors():
    with pytest.raises(UserError, match="decay"):
        make("darts-minus", tiny_supernet(), decay="exponential")
    sn = SPACES.get("darts-s4")(C=4, N=3, in_channels=1, num_classes=3).supernet()
    with pytest.raises(UserError, match="skip_connect"):
        make("darts-minus", sn)


# -- every new optimizer -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_two_steps_move_weights_and_alpha_and_the_state_round_trips(name):
    sn = tiny_supernet()
    opt = make(name, sn)
    alpha0 = sn.alphas["cell"].detach().clone()
    weights0 = [p.detach().clone() for p in sn.weight_parameters()]
    for k in range(2):
        out = opt.step(batch(10 + k), batch(20 + k), epoch=0)
        assert all(math.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(weights0, sn.weight_parameters()))
    assert (sn.alphas["cell"] - alpha0).abs().max() > 1e-4
    make(name, tiny_supernet()).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_each_runs_on_the_darts_space(name):
    torch.manual_seed(0)
    sn = SPACES.get("darts-s3")(C=4, N=3, in_channels=1, num_classes=3).supernet().train()
    opt = make(name, sn)
    alphas0 = {ct: a.detach().clone() for ct, a in sn.alphas.items()}
    assert math.isfinite(opt.step(batch(1), batch(2), epoch=0)["train_loss"])
    assert all(not torch.equal(a, alphas0[ct]) for ct, a in sn.alphas.items())


@pytest.mark.parametrize("name", NAMES)
def test_every_selector_runs_on_its_supernet(tmp_path, name):
    data = tiny_idx_dir(tmp_path / "data")
    run = asel.search(out=tmp_path / "run", overrides={
        "space.C": 4, "space.N": 1, "data.batch_size": 32, "search.epochs": 1, "threads": 1,
        "data.data_dir": str(data), "search.optimizer": name,
        "select.options.perturbation.tune_steps": 2, "select.options.perturbation.valid_batches": 2,
        "select.options.shapley.permutations": 2, "select.options.shapley.batch_size": 32,
        "select.options.influence.batches": 2})
    selectors = ["magnitude", "perturbation", "shapley", "influence"]
    sels = asel.select(run, selectors)
    assert set(sels) == set(selectors)
    assert all(str(s.architecture).startswith("|") for s in sels.values())  # an NB201 arch string each
