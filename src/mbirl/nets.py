"""Small network building blocks shared by the models, policies and discriminators."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["mlp"]


def mlp(sizes: Sequence[int], *, last_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (and after the last with ``last_activation``)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
