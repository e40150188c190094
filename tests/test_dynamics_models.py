"""Forward models: one interface, learning a linear system, save/load, attention weights, open-loop errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbirl.dynamics.models import MODELS, ForwardModel, open_loop_errors
from mbirl.errors import InputError


def _linear_data(n: int = 2048, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.1], [0.0, -0.1, 0.95]])
    B = torch.tensor([[0.0], [0.05], [0.1]])
    s = torch.randn(n, 3, generator=g)
    a = torch.randn(n, 1, generator=g)
    return s, a, s @ A.T + a @ B.T, (A, B)


@pytest.mark.parametrize("kind", MODELS.names)
def test_model_learns_linear_dynamics_and_round_trips(kind, tmp_path):
    torch.manual_seed(0)
    s, a, s2, _ = _linear_data()
    model = MODELS.make(kind, obs_dim=3, act_dim=1)
    model.set_normalizer(s.numpy(), s2.numpy(), np.ones(1, np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    before = float(model.eval_score(s, a, s2).mean())
    for i in range(250):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(s)
        loss = model.loss(s[idx], a[idx], s2[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(model.eval_score(s, a, s2).mean())
    assert after < 0.2 * before
    assert model(s[:5], a[:5]).shape == (5, 3)
    model.save(tmp_path / "m")
    loaded = ForwardModel.load(tmp_path / "m")
    assert type(loaded) is type(model)
    torch.testing.assert_close(loaded(s[:7], a[:7]), model(s[:7], a[:7]))


def test_faithful_attention_is_trivially_one_and_multi_token_is_not():
    s, a, _, _ = _linear_data(32)
    faithful = MODELS.make("attention", obs_dim=3, act_dim=1)
    faithful(s, a)
    assert faithful.last_weights is not None and faithful.last_weights.shape[-1] == 1
    torch.testing.assert_close(faithful.last_weights, torch.ones_like(faithful.last_weights))
    multi = MODELS.make("attention-multi", obs_dim=3, act_dim=1)
    multi(s, a)
    w = multi.last_weights
    assert w is not None and w.shape[-2:] == (3, 4)  # 3 state queries over 3 state + 1 action tokens
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert (w < 0.999).all()


def test_open_loop_errors_are_zero_for_an_exact_model():
    _, _, _, (A, B) = _linear_data(8)

    class Exact(ForwardModel):
        kind = "mlp"

        def _delta(self, obs_n, act_n):
            raise AssertionError

        def forward(self, obs, act):
            return obs @ A.T + act @ B.T

    model = Exact(3, 1)
    obs = [torch.randn(4, 3)]
    acts = torch.randn(4, 10, 1)
    for t in range(10):
        obs.append(obs[-1] @ A.T + acts[:, t] @ B.T)
    errs = open_loop_errors(model, torch.stack(obs, 1), acts)
    assert errs.shape == (10,)
    assert float(errs.max()) < 1e-10


def test_bad_model_options():
    assert MODELS.names == ("attention", "attention-multi", "gru", "mlp")
    with pytest.raises(InputError, match="unknown dynamics model 'transformer'"):
        MODELS.make("transformer", obs_dim=3, act_dim=1)
    with pytest.raises(InputError):
        MODELS.make("attention", obs_dim=3, act_dim=1, hidden=10, heads=4)
    with pytest.raises(InputError):
        MODELS.make("mlp", obs_dim=0, act_dim=1)


def test_models_are_built_with_the_shared_mlp_and_keep_their_parameter_names():
    """The models' MLPs come from :func:`mbirl.nets.mlp` (ReLU after the last layer of the encoders): the same
    layers in the same order as before, so saved models load and a seed gives the same weights."""
    torch.manual_seed(0)
    gru = MODELS.make("gru", obs_dim=3, act_dim=1)
    assert [type(m).__name__ for m in gru.enc_s] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert [type(m).__name__ for m in gru.dec] == ["Linear", "ReLU", "Linear"]
    assert sorted(gru.state_dict()) == sorted(
        ["obs_mean", "obs_std", "delta_std", "act_scale"]
        + [f"{part}.{i}.{w}" for part in ("enc_s", "enc_a") for i in (0, 2) for w in ("weight", "bias")]
        + [f"dec.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")]
        + [f"cell.{w}_{k}" for w in ("weight", "bias") for k in ("ih", "hh")])
    torch.manual_seed(0)
    first = torch.nn.Linear(3, 100)  # the first layer created is the state encoder's first
    torch.testing.assert_close(gru.enc_s[0].weight, first.weight, rtol=0, atol=0)
