"""An ensemble of forward models: the mean prediction for the real-state-corrected rollout, a random member per
sample and the members' disagreement for imagined rollouts (MBPO, Janner et al. 2019; MOPO, Yu et al. 2020).

Every member is a :class:`~mbirl.dynamics.models.ForwardModel` of the same kind with its own initial weights; all
are trained on the same minibatches (their diversity comes from the initialisation, which PETS, Chua et al. 2018,
found to matter more than bootstrapped data). The disagreement of a prediction is the standard deviation of the
members' next observations across the ensemble, in units of the observation's standard deviation, averaged over
features: a cheap epistemic-uncertainty estimate that grows where the replay data is thin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mbirl.dynamics.models import MODELS, ForwardModel
from mbirl.errors import InputError

__all__ = ["ModelEnsemble"]


class ModelEnsemble(nn.Module):
    """``size`` forward models of kind ``kind`` behind the :class:`~mbirl.dynamics.models.ForwardModel` interface
    (``forward``, ``loss``, ``set_normalizer``, ``obs_std``), plus :meth:`sample`."""

    def __init__(self, kind: str, size: int, *, obs_dim: int, act_dim: int, **kwargs: Any) -> None:
        super().__init__()
        if size < 2:
            raise InputError(f"an ensemble needs >= 2 members, got {size}", field="ensemble_size")
        self.members = nn.ModuleList([MODELS.make(kind, obs_dim=obs_dim, act_dim=act_dim, **kwargs)
                                      for _ in range(size)])
        self.kind, self.obs_dim, self.act_dim = kind, obs_dim, act_dim

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def obs_std(self) -> torch.Tensor:
        return self._member(0).obs_std

    def _member(self, i: int) -> ForwardModel:
        member = self.members[i]
        assert isinstance(member, ForwardModel)
        return member

    def set_normalizer(self, obs: np.ndarray | torch.Tensor, next_obs: np.ndarray | torch.Tensor,
                       act_scale: np.ndarray | torch.Tensor | None = None) -> None:
        for i in range(self.size):
            self._member(i).set_normalizer(obs, next_obs, act_scale)

    def predictions(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Every member's next observation, ``(size, B, obs_dim)``."""
        return torch.stack([self._member(i)(obs, act) for i in range(self.size)])

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The members' mean next observation ``(B, obs_dim)``."""
        return self.predictions(obs, act).mean(0)

    def sample(self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random member's next observation per row ``(B, obs_dim)`` (differentiable) and the disagreement
        ``(B,)`` (detached)."""
        preds = self.predictions(obs, act)
        pick = torch.randint(0, self.size, (obs.shape[0],), generator=generator, device=generator.device)
        chosen = preds[pick.to(obs.device), torch.arange(obs.shape[0], device=obs.device)]
        disagreement = (preds.detach().std(0) / self.obs_std).mean(-1)
        return chosen, disagreement

    def loss(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Sum of the members' losses on the same minibatch (each member's gradient is its own)."""
        return torch.stack([self._member(i).loss(obs, act, next_obs) for i in range(self.size)]).sum()

    @torch.no_grad()
    def eval_score(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Per-sample one-step error of the mean prediction (as :meth:`ForwardModel.eval_score`)."""
        return (((self(obs, act) - next_obs) / self.obs_std) ** 2).mean(-1)
