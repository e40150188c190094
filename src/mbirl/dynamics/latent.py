"""A latent state for pixel observations: the convolutional encoder the policy and the forward model share, the
decoder of its reconstruction term, and the loss that trains them with the forward model.

Loss (docs/design.md, "MAIRL from pixels"), for a minibatch of replay transitions ``(o, a, o')``::

    z, z'  = enc(o), enc(o')
    L      = mean || f_phi(z, a) - stopgrad(z') ||^2  +  recon_weight * mean || dec(z) - o ||^2

(``f_phi`` predicts the change of ``z``, in the forward model's own loss). The first term is the forward model's
loss and trains the encoder to make the latent predictable; alone, it is minimised by a constant encoding (a
collapsed latent predicts itself perfectly and tells the policy nothing), so the reconstruction term ties the
latent to what the frames show. The target ``z'`` is not differentiated, as in SPR and TD-MPC: the encoder moves
``z`` towards what the model can predict, not the other way round.
"""

from __future__ import annotations

import torch
from torch import nn

from mbirl.dynamics.ensemble import ModelEnsemble
from mbirl.dynamics.models import ForwardModel
from mbirl.errors import InputError

__all__ = ["ConvDecoder", "ConvEncoder", "latent_model_loss", "pixels_to_unit"]

_STRIDES = (2, 2, 2, 1)
"""Four 3x3 convolutions: 64 -> 31 -> 15 -> 7 -> 5."""


def pixels_to_unit(obs: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``[0, 255]`` as floats in ``[-0.5, 0.5]`` (what the encoder reads and the decoder predicts)."""
    return obs.to(torch.float32) / 255.0 - 0.5


def _conv_side(size: int) -> int:
    for stride in _STRIDES:
        size = (size - 3) // stride + 1
    return size


class ConvEncoder(nn.Module):
    """SAC-AE's pixel encoder (Yarats et al. 2021) scaled to 64x64: four 3x3 convolutions of ``channels`` with
    ReLUs, strides 2, 2, 2, 1 (64 -> 31 -> 15 -> 7 -> 5 pixels a side), a linear layer to ``latent_dim``, LayerNorm
    and tanh (a bounded latent needs no normaliser that would drift as the encoder learns).

    Args:
        in_channels: channels of a stacked observation (3 per frame).
        latent_dim: width of the latent state.
        size: side of the frames.
        channels: channels of every convolution.
    """

    def __init__(self, in_channels: int, *, latent_dim: int, size: int, channels: int = 32) -> None:
        super().__init__()
        side = _conv_side(size)
        if side < 1 or in_channels < 1 or latent_dim < 1:
            raise InputError(f"needs frames of >= 31 pixels, >= 1 channel and latent width, got size {size}, "
                             f"{in_channels} channels, latent {latent_dim}", field="encoder")
        self.in_channels, self.latent_dim, self.size, self.channels = in_channels, latent_dim, size, channels
        layers: list[nn.Module] = []
        prev = in_channels
        for stride in _STRIDES:
            layers += [nn.Conv2d(prev, channels, 3, stride=stride), nn.ReLU()]
            prev = channels
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, latent_dim),
                                  nn.LayerNorm(latent_dim), nn.Tanh())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Latent states ``(B, latent_dim)`` of stacked observations ``(B, C, size, size)`` (uint8 pixels)."""
        if obs.ndim != 4 or tuple(obs.shape[1:]) != (self.in_channels, self.size, self.size):
            raise InputError(f"expected observations (B, {self.in_channels}, {self.size}, {self.size}), got "
                             f"{tuple(obs.shape)}", field="obs")
        return self.head(self.convs(pixels_to_unit(obs)))


class ConvDecoder(nn.Module):
    """The encoder mirrored: a linear layer to ``channels x 5 x 5``, then transposed 3x3 convolutions (strides 1,
    2, 2, 2) back to the stacked observation ``(out_channels, size, size)`` in the units of
    :func:`pixels_to_unit`."""

    def __init__(self, out_channels: int, *, latent_dim: int, size: int, channels: int = 32) -> None:
        super().__init__()
        side = _conv_side(size)
        self.out_channels, self.size, self.channels, self.side = out_channels, size, channels, side
        self.head = nn.Sequential(nn.Linear(latent_dim, channels * side * side), nn.ReLU())
        layers: list[nn.Module] = []
        sizes = [size]
        for stride in _STRIDES:
            sizes.append((sizes[-1] - 3) // stride + 1)
        for i, stride in enumerate(reversed(_STRIDES)):
            into, out = sizes[len(_STRIDES) - i], sizes[len(_STRIDES) - i - 1]
            extra = out - ((into - 1) * stride + 3)  # what the strided encoder's floor division dropped
            last = i == len(_STRIDES) - 1
            layers.append(nn.ConvTranspose2d(channels, out_channels if last else channels, 3, stride=stride,
                                             output_padding=extra))
            if not last:
                layers.append(nn.ReLU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``(B, out_channels, size, size)`` of latent states ``(B, latent_dim)``."""
        h = self.head(z).view(len(z), self.channels, self.side, self.side)
        return self.deconvs(h)


def latent_model_loss(encoder: ConvEncoder, decoder: ConvDecoder | None, model: ForwardModel | ModelEnsemble,
                      obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, *, recon_weight: float
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of the module docstring on a minibatch (``obs``, ``next_obs`` uint8 stacks ``(B, C, H, W)``,
    ``act`` ``(B, act_dim)``); returns it and its terms (``model``, ``recon``)."""
    z_all = encoder(torch.cat([obs, next_obs]))
    z, z_next = z_all[: len(obs)], z_all[len(obs):]
    model_loss = model.loss(z, act, z_next.detach())
    stats = {"model": float(model_loss.detach()), "recon": float("nan")}
    loss = model_loss
    if decoder is not None and recon_weight > 0:
        recon = ((decoder(z) - pixels_to_unit(obs)) ** 2).mean()
        stats["recon"] = float(recon.detach())
        loss = loss + recon_weight * recon
    return loss, stats
