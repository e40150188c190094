"""Cost parameterisations: values against hand computations, shapes for any horizon, non-negativity."""

from __future__ import annotations

import pytest
import torch

from mbirl.costs import COSTS, RBFWeightedCost, make_cost
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
    for name in COSTS.names:
        cost = make_cost(name, horizon=10, dim=6)
        z, goal = torch.randn(4, 10, 6), torch.randn(4, 6)
        torch.testing.assert_close(cost(z, goal)[1:2], cost(z[1:2], goal[1:2]))


def test_unknown_cost_is_an_input_error():
    with pytest.raises(InputError, match="unknown cost 'nope'") as excinfo:
        make_cost("nope", horizon=10, dim=6)
    assert "default, weighted, timedep, rbf, neural" in str(excinfo.value)
    assert excinfo.value.field == "cost"


def test_registry_lists_every_cost_once_in_order():
    assert COSTS.names == ("default", "weighted", "timedep", "rbf", "neural", "path")
    for name in COSTS.names:
        assert make_cost(name, horizon=10, dim=6).dim == 6


def test_cost_base_does_not_import_the_concrete_costs():
    """``costs/base.py`` defines the interface and the registry only; the concrete costs register themselves."""
    import ast
    import inspect

    import mbirl.costs.base

    tree = ast.parse(inspect.getsource(mbirl.costs.base))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(m and m.startswith(("mbirl.costs.linear", "mbirl.costs.neural")) for m in imported), imported


def test_rbf_original_formulation_sums_over_time_with_integer_centres():
    """The official code's RBF cost: centres ``int(linspace(0, T-1, 5))`` and a sum over time."""
    basis = rbf_basis(10, integer_centres=True)
    t = torch.arange(10.0)[:, None]
    torch.testing.assert_close(basis, torch.exp(-((t - torch.tensor([0.0, 2.0, 4.0, 6.0, 9.0])) ** 2) / 2.0))
    assert not torch.allclose(basis, rbf_basis(10))  # 2.25, 4.5, 6.75 are not integers
    z, goal = torch.randn(3, 10, 6), torch.randn(3, 6)
    orig = make_cost("rbf", horizon=10, dim=6, rbf_original=True)
    with torch.no_grad():
        orig.theta.copy_(torch.rand(5, 6))
    e = (z - goal[:, None]) ** 2
    torch.testing.assert_close(orig(z, goal), (orig.time_weights() * e).sum(1).mean(-1))
    # With integral centres (T=9: 0, 2, 4, 6, 8) the two formulations differ by exactly the factor T.
    ours, theirs = RBFWeightedCost(9, 6), RBFWeightedCost(9, 6, original=True)
    torch.testing.assert_close(theirs(z[:, :9], goal), 9 * ours(z[:, :9], goal))
