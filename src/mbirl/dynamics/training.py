"""Fitting a learned forward model to transitions: the one minibatch loop used by the MAIRL trainer's model
updates and by the model comparison (``mbirl mairl models``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from mbirl.errors import check_finite

if TYPE_CHECKING:
    from mbirl.data.replay import ReplayBuffer
    from mbirl.dynamics.ensemble import ModelEnsemble
    from mbirl.dynamics.models import ForwardModel

__all__ = ["fit_forward_model"]


def fit_forward_model(model: ForwardModel | ModelEnsemble, optimizer: torch.optim.Optimizer, data: ReplayBuffer,
                      steps: int, *, batch_size: int, rng: np.random.Generator, iteration: int = 0) -> float:
    """``steps`` optimiser updates of ``model`` on minibatches of ``batch_size`` transitions drawn uniformly
    (with replacement, by ``rng.integers``) from all of ``data``; returns the mean loss (NaN for zero steps).

    A non-finite loss raises :class:`~mbirl.errors.NonFiniteError` naming ``iteration``.
    """
    losses = []
    for _ in range(steps):
        b = data.batch(rng.integers(0, len(data), size=batch_size))
        loss = model.loss(b.obs, b.act, b.next_obs)
        check_finite(loss, "forward-model loss", iteration)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else math.nan
