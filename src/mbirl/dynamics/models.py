"""Learned forward models ``s' = f_phi(s, a)`` for MAIRL, behind one small interface.

Variants (docs/design.md, "MAIRL"):

* ``attention`` — the original's self-attention model, *faithful*: the state embedding (two dense layers) is the
  single query token and the action embedding (two dense layers) the single key/value token of multi-head
  scaled dot-product attention; a skip connection adds the state embedding back and an MLP decodes. With one
  key per head the softmax is identically 1, so attention reduces to a linear map of the action embedding —
  kept on purpose, as the original.
* ``attention-multi`` — every state and action feature is its own token (a per-feature linear embedding plus a
  learned feature-id embedding); the state tokens attend over all state and action tokens, so the attention
  weights are not trivially 1.
* ``gru`` — MGAIL's model: a GRU cell whose hidden state is the state embedding and whose input is the action
  embedding.
* ``mlp`` — a plain MLP on ``[s, a]``.

Every model works on standardised observations (statistics held as buffers, so they are saved with the weights)
and predicts the standardised change ``(s' - s) / std(s' - s)``; ``forward`` returns the next observation in
environment units, so models are drop-in replacements in the policy rollout.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mbirl.errors import InputError
from mbirl.nets import mlp
from mbirl.registry import Registry
from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["MODELS", "AttentionModel", "ForwardModel", "GRUModel", "MLPModel", "MultiTokenAttentionModel",
           "open_loop_errors"]

class ForwardModel(nn.Module, ABC):
    """One-step forward model over flat observations and (one-hot, for discrete spaces) actions.

    Subclasses implement :meth:`_delta` (standardised change of the state from standardised inputs).
    """

    kind: str = ""
    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    delta_std: torch.Tensor
    act_scale: torch.Tensor

    def __init__(self, obs_dim: int, act_dim: int, **kwargs: Any) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise InputError(f"obs_dim and act_dim must be >= 1, got {obs_dim}, {act_dim}", field="model")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.kwargs = dict(kwargs)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("delta_std", torch.ones(obs_dim))
        self.register_buffer("act_scale", torch.ones(act_dim))

    def set_normalizer(self, obs: np.ndarray | torch.Tensor, next_obs: np.ndarray | torch.Tensor,
                       act_scale: np.ndarray | torch.Tensor | None = None) -> None:
        """Set input/output statistics from transitions (floors avoid dividing by ~0 for constant features)."""
        o = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        d = torch.as_tensor(np.asarray(next_obs), dtype=torch.float32) - o
        self.obs_mean.copy_(o.mean(0))
        self.obs_std.copy_(o.std(0).clamp_min(1e-3) if len(o) > 1 else torch.ones(self.obs_dim))
        self.delta_std.copy_(d.std(0).clamp_min(1e-4) if len(o) > 1 else torch.ones(self.obs_dim))
        if act_scale is not None:
            self.act_scale.copy_(torch.as_tensor(np.asarray(act_scale), dtype=torch.float32).clamp_min(1e-6))

    @abstractmethod
    def _delta(self, obs_n: torch.Tensor, act_n: torch.Tensor) -> torch.Tensor:
        """Standardised state change from standardised observation ``(B, obs_dim)`` and action ``(B, act_dim)``."""

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Predicted next observation ``(B, obs_dim)`` in environment units."""
        obs_n = (obs - self.obs_mean) / self.obs_std
        return obs + self._delta(obs_n, act / self.act_scale) * self.delta_std

    def loss(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Training loss: mean squared error of the standardised state change."""
        obs_n = (obs - self.obs_mean) / self.obs_std
        target = (next_obs - obs) / self.delta_std
        return ((self._delta(obs_n, act / self.act_scale) - target) ** 2).mean()

    @torch.no_grad()
    def eval_score(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Per-sample one-step prediction error: mean over features of the squared error in units of
        the observation's standard deviation, shape ``(B,)``."""
        return (((self(obs, act) - next_obs) / self.obs_std) ** 2).mean(-1)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "obs_dim": self.obs_dim, "act_dim": self.act_dim, "kwargs": self.kwargs}

    def save(self, stem: str | Path) -> None:
        """``stem.safetensors`` + ``stem.json``: weights, normaliser and constructor arguments."""
        save_checkpoint(stem, {"config": self.config(), "state_dict": dict(self.state_dict())})

    @staticmethod
    def load(stem: str | Path) -> ForwardModel:
        state = load_checkpoint(stem)
        try:
            cfg = state["config"]
            model = MODELS.make(cfg["kind"], obs_dim=cfg["obs_dim"], act_dim=cfg["act_dim"], **cfg["kwargs"])
            model.load_state_dict(state["state_dict"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise InputError(f"not a saved forward model ({exc})", source=str(stem)) from None
        return model


class MLPModel(ForwardModel):
    """Plain MLP on the concatenated standardised state and action."""

    kind = "mlp"

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 200, layers: int = 2) -> None:
        super().__init__(obs_dim, act_dim, hidden=hidden, layers=layers)
        self.net = mlp([obs_dim + act_dim] + [hidden] * layers + [obs_dim])

    def _delta(self, obs_n: torch.Tensor, act_n: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs_n, act_n], -1))


class GRUModel(ForwardModel):
    """MGAIL's forward model: ``h = GRUCell(input=enc_a(a), hidden=enc_s(s))``, then an MLP decoder."""

    kind = "gru"

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 100) -> None:
        super().__init__(obs_dim, act_dim, hidden=hidden)
        self.enc_s = mlp([obs_dim, hidden, hidden], last_activation=True)
        self.enc_a = mlp([act_dim, hidden, hidden], last_activation=True)
        self.cell = nn.GRUCell(hidden, hidden)
        self.dec = mlp([hidden, hidden, obs_dim])

    def _delta(self, obs_n: torch.Tensor, act_n: torch.Tensor) -> torch.Tensor:
        return self.dec(self.cell(self.enc_a(act_n), self.enc_s(obs_n)))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head scaled dot-product attention on ``(B, Lq, D)`` / ``(B, Lk, D)``; returns output and weights."""
    b, lq, d = q.shape
    lk = k.shape[1]
    dh = d // heads
    qh = q.view(b, lq, heads, dh).transpose(1, 2)
    kh = k.view(b, lk, heads, dh).transpose(1, 2)
    vh = v.view(b, lk, heads, dh).transpose(1, 2)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # (B, H, Lq, Lk)
    return (weights @ vh).transpose(1, 2).reshape(b, lq, d), weights


class AttentionModel(ForwardModel):
    """Faithful self-attention model: one query (state embedding), one key/value (action embedding) per head."""

    kind = "attention"

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 100, heads: int = 4) -> None:
        if hidden % heads:
            raise InputError(f"hidden ({hidden}) must be divisible by heads ({heads})", field="model")
        super().__init__(obs_dim, act_dim, hidden=hidden, heads=heads)
        self.heads = heads
        self.enc_s = mlp([obs_dim, hidden, hidden], last_activation=True)
        self.enc_a = mlp([act_dim, hidden, hidden], last_activation=True)
        self.wq, self.wk, self.wv = (nn.Linear(hidden, hidden) for _ in range(3))
        self.wo = nn.Linear(hidden, hidden)
        self.dec = mlp([hidden, hidden, obs_dim])
        self.last_weights: torch.Tensor | None = None

    def _delta(self, obs_n: torch.Tensor, act_n: torch.Tensor) -> torch.Tensor:
        s = self.enc_s(obs_n)[:, None]
        a = self.enc_a(act_n)[:, None]
        out, self.last_weights = _attention(self.wq(s), self.wk(a), self.wv(a), self.heads)
        return self.dec(self.wo(out)[:, 0] + s[:, 0])


class MultiTokenAttentionModel(ForwardModel):
    """Self-attention over one token per state feature and per action feature (queries: the state tokens)."""

    kind = "attention-multi"

    def __init__(self, obs_dim: int, act_dim: int, token_dim: int = 32, heads: int = 4, hidden: int = 200) -> None:
        if token_dim % heads:
            raise InputError(f"token_dim ({token_dim}) must be divisible by heads ({heads})", field="model")
        super().__init__(obs_dim, act_dim, token_dim=token_dim, heads=heads, hidden=hidden)
        n = obs_dim + act_dim
        self.heads = heads
        self.tok_w = nn.Parameter(torch.randn(n, token_dim) / math.sqrt(token_dim))
        self.tok_id = nn.Parameter(torch.randn(n, token_dim) * 0.1)
        self.tok_mlp = mlp([token_dim, token_dim, token_dim], last_activation=True)
        self.wq, self.wk, self.wv = (nn.Linear(token_dim, token_dim) for _ in range(3))
        self.wo = nn.Linear(token_dim, token_dim)
        self.norm = nn.LayerNorm(token_dim)
        self.dec = mlp([obs_dim * token_dim, hidden, hidden, obs_dim])
        self.last_weights: torch.Tensor | None = None

    def _delta(self, obs_n: torch.Tensor, act_n: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs_n, act_n], -1)  # (B, n)
        tokens = self.tok_mlp(x[..., None] * self.tok_w + self.tok_id)  # (B, n, D)
        q = tokens[:, : self.obs_dim]
        out, self.last_weights = _attention(self.wq(q), self.wk(tokens), self.wv(tokens), self.heads)
        h = self.norm(q + self.wo(out))
        return self.dec(h.flatten(1))


MODELS = Registry[ForwardModel]("dynamics model")
"""The forward models by name: ``MODELS.make(kind, obs_dim=..., act_dim=..., **kwargs)``; ``MODELS.names`` lists
them (``attention``, ``attention-multi``, ``gru``, ``mlp``)."""
for _cls in (AttentionModel, MultiTokenAttentionModel, GRUModel, MLPModel):
    MODELS.register(_cls.kind)(_cls)


@torch.no_grad()
def open_loop_errors(model: ForwardModel, obs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """Open-loop prediction error along held-out segments.

    Args:
        obs: ``(B, H + 1, obs_dim)`` real observations; ``acts``: ``(B, H, act_dim)`` the actions taken.
    Returns:
        ``(H,)``: entry ``k`` is the error after ``k + 1`` steps predicted from ``obs[:, 0]`` with the model's own
        predictions fed back (mean over segments and features of the squared error in units of the observation
        standard deviation).
    """
    pred = obs[:, 0]
    errs = []
    for t in range(acts.shape[1]):
        pred = model(pred, acts[:, t])
        errs.append((((pred - obs[:, t + 1]) / model.obs_std) ** 2).mean())
    return torch.stack(errs)
