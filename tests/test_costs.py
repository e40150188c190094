"""Cost parameterisations: values against hand computations, shapes for any horizon, non-negativity."""

from __future__ import annotations

import pytest
import torch

from mbirl.costs import COST_NAMES, RBFWeightedCost, make_cost
from mbirl.costs.linear import rbf_basis
from mbirl.errors import InputError


def test_linear_costs_match_hand_computation():
    torch.manual_seed(0)
    z, goal = torch.randn(3, 10, 6), torch.randn(3, 6)
    e = (z - goal[:, None]) ** 2
    torch.testing.assert_close(make_cost("default", horizon=10, dim=6)(z, goal), e.sum(-1).mean(-1))
    w = make_cost("weighted", horizon=10, dim=6)
    torch.testing.assert_close(w(z, goal), 0.1 * e.sum(-1).mean(-1))
    td = make_cost("timedep", horizon=10, dim=6)
    with torch.no_grad():
        td.weights.copy_(torch.rand(10, 6))
    torch.testing.assert_close(td(z, goal), (td.weights * e).mean(dim=(1, 2)))


@pytest.mark.parametrize("horizon", [3, 10, 25, 40])
def test_rbf_cost_works_for_any_horizon(horizon):
    cost = RBFWeightedCost(horizon, 6)
    basis = rbf_basis(horizon)
    assert basis.shape == (horizon, 5)
    assert basis[0, 0] == pytest.approx(1.0) and basis[-1, -1] == pytest.approx(1.0)
    z, goal = torch.randn(2, horizon, 6), torch.randn(2, 6)
    out = cost(z, goal)
    assert out.shape == (2,)
    torch.testing.assert_close(out, (cost.time_weights() * (z - goal[:, None]) ** 2).mean(dim=(1, 2)))
    assert sum(p.numel() for p in cost.parameters()) == 30


def test_neural_cost_nonnegative_and_seeded():
    a = make_cost("neural", horizon=10, dim=6, seed=3)
    b = make_cost("neural", horizon=10, dim=6, seed=3)
    c = make_cost("neural", horizon=10, dim=6, seed=4)
    z, goal = 50 * torch.randn(64, 10, 6), torch.randn(64, 6)
    assert torch.all(a(z, goal) >= 0)
    torch.testing.assert_close(a(z, goal), b(z, goal))
    assert not torch.allclose(a(z, goal), c(z, goal))


def test_cost_is_per_demo_and_batch_independent():
    for name in COST_NAMES:
        cost = make_cost(name, horizon=10, dim=6)
        z, goal = torch.randn(4, 10, 6), torch.randn(4, 6)
        torch.testing.assert_close(cost(z, goal)[1:2], cost(z[1:2], goal[1:2]))


def test_unknown_cost_is_an_input_error():
    with pytest.raises(InputError, match="unknown cost 'nope'"):
        make_cost("nope", horizon=10, dim=6)
