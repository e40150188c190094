"""AIRL / GAIL discriminators: the AIRL identity, terminal handling, state-only reward, telescoping shaping."""

from __future__ import annotations

import pytest
import torch

from mbirl.errors import InputError
from mbirl.rewards import DISCRIMINATORS, AIRLDiscriminator, GAILDiscriminator
from mbirl.types import TransitionBatch

torch.manual_seed(0)
H = (16, 8)


def _batch(n: int = 16, obs_dim: int = 3, act_dim: int = 2):
    return torch.randn(n, obs_dim), torch.randn(n, act_dim), torch.randn(n, obs_dim)


def test_airl_logit_is_f_minus_log_pi_and_d_is_exp_f_over_exp_f_plus_pi():
    disc = AIRLDiscriminator(3, 2, gamma=0.9, hidden=H)
    obs, act, nxt = _batch()
    done = torch.zeros(16)
    log_pi = torch.randn(16)
    g, h, h2 = disc.g(obs, act), disc.h(obs), disc.h(nxt)
    f = disc.f(obs, act, nxt, done)
    torch.testing.assert_close(f, g + 0.9 * h2 - h)
    logit = disc.logits(obs, act, nxt, done, log_pi)
    torch.testing.assert_close(logit, f - log_pi)
    d = torch.sigmoid(logit)
    torch.testing.assert_close(d, torch.exp(f) / (torch.exp(f) + torch.exp(log_pi)))
    torch.testing.assert_close(disc.reward(obs, act, nxt, done), f)


def test_airl_terminal_transitions_drop_the_next_potential():
    disc = AIRLDiscriminator(3, 2, gamma=0.99, hidden=H)
    obs, act, nxt = _batch()
    done = torch.ones(16)
    f1 = disc.f(obs, act, nxt, done)
    f2 = disc.f(obs, act, nxt + 5.0, done)
    torch.testing.assert_close(f1, f2)
    torch.testing.assert_close(f1, disc.g(obs, act) - disc.h(obs))


def test_state_only_reward_ignores_actions():
    disc = AIRLDiscriminator(3, 2, gamma=0.99, hidden=H, state_only=True)
    obs, act, _ = _batch()
    torch.testing.assert_close(disc.g(obs, act), disc.g(obs, torch.randn_like(act)))


def test_shaping_telescopes_along_a_trajectory():
    gamma = 0.95
    disc = AIRLDiscriminator(3, 1, gamma=gamma, hidden=H)
    states = torch.randn(11, 3)
    acts = torch.randn(10, 1)
    done = torch.zeros(10)
    f = disc.f(states[:-1], acts, states[1:], done)
    disc_sum = sum(gamma**t * f[t] for t in range(10))
    g_sum = sum(gamma**t * disc.g(states[t:t + 1], acts[t:t + 1])[0] for t in range(10))
    expected = g_sum + gamma**10 * disc.h(states[-1:])[0] - disc.h(states[:1])[0]
    torch.testing.assert_close(disc_sum, expected, rtol=1e-5, atol=1e-5)


def test_gail_reward_is_log_d():
    disc = GAILDiscriminator(3, 2, hidden=H)
    obs, act, nxt = _batch()
    done = torch.zeros(16)
    logit = disc.logits(obs, act, nxt, done, torch.zeros(16))
    torch.testing.assert_close(disc.reward(obs, act, nxt, done), torch.log(torch.sigmoid(logit)))


@pytest.mark.parametrize("kind", ["airl", "gail"])
def test_discriminator_learns_to_separate(kind):
    torch.manual_seed(0)
    disc = DISCRIMINATORS.make(kind, obs_dim=2, act_dim=1, gamma=0.99, hidden=(200, 100))
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)

    def batch(shift: float) -> TransitionBatch:
        obs = torch.randn(128, 2) + shift
        return TransitionBatch(obs, torch.randn(128, 1) + shift, obs + 0.1, torch.zeros(128), torch.zeros(128))

    for _ in range(150):
        loss, stats = disc.loss(batch(2.0), batch(-2.0), 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stats["expert_acc"] > 0.9 and stats["agent_acc"] > 0.9


def test_log_pi_is_needed_by_airl_only():
    obs = torch.randn(4, 2)
    no_pi = TransitionBatch(obs, torch.randn(4, 1), obs, torch.zeros(4))
    gail = DISCRIMINATORS.make("gail", obs_dim=2, act_dim=1, hidden=(8,))
    with_pi = no_pi.with_log_pi(torch.randn(4))
    torch.testing.assert_close(gail.loss(no_pi, no_pi, 1.0)[0], gail.loss(with_pi, with_pi, 1.0)[0])  # GAIL ignores it
    airl = DISCRIMINATORS.make("airl", obs_dim=2, act_dim=1, gamma=0.9, hidden=(8,))
    with pytest.raises(InputError, match="log_pi"):
        airl.loss(no_pi, with_pi, 1.0)
    loss, stats = airl.loss(with_pi, with_pi, 1.0, grad_penalty=1.0)
    assert torch.isfinite(loss) and stats["grad_penalty"] > 0


def test_bad_discriminator_options():
    assert DISCRIMINATORS.names == ("airl", "gail")
    with pytest.raises(InputError, match="unknown discriminator 'wgan'"):
        DISCRIMINATORS.make("wgan", obs_dim=2, act_dim=1)
    with pytest.raises(InputError):
        AIRLDiscriminator(2, 1, gamma=0.0, hidden=H)
    with pytest.raises(InputError, match="state-only"):
        DISCRIMINATORS.make("gail", obs_dim=2, act_dim=1, gamma=0.99, hidden=H, state_only=True)
