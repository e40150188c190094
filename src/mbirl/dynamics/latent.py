"""A latent state for pixel observations: the convolutional encoder the policy and the forward model share, the
decoder of its reconstruction term, and the loss that trains them with the forward model.

Loss (docs/design.md, "MAIRL from pixels"), for a minibatch of replay transitions ``(o, a, o')``::

    z, z'  = enc(o), enc(o')
    L      = mean || f_phi(z, a) - stopgrad(z') ||^2  +  recon_weight * mean || dec(z) - pool2(o) ||^2

(``f_phi`` predicts the change of ``z``, in the forward model's own loss). The first term is the forward model's
loss and trains the encoder to make the latent predictable; alone, it is minimised by a constant encoding (a
collapsed latent predicts itself perfectly and tells the policy nothing), so the reconstruction term ties the
latent to what the frames show. The target ``z'`` is not differentiated, as in SPR and TD-MPC: the encoder moves
``z`` towards what the model can predict, not the other way round.

The decoder draws the whole stack (so the latent must hold what the older frames show: the velocity) at half
resolution, ``pool2`` averaging 2x2 pixels: the term only has to keep the latent from collapsing and hold the
pose, which 32x32 frames show (the pendulum's rod is still three pixels wide), and a full-resolution transposed
convolution costs five times as much on a CPU, more than the encoder's forward and backward passes together.
Convolutions run in the channels-last memory layout, twice as fast on a CPU as the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mbirl.dynamics.ensemble import ModelEnsemble
from mbirl.dynamics.models import ForwardModel
from mbirl.errors import InputError

__all__ = ["ConvDecoder", "ConvEncoder", "latent_model_loss", "pixels_to_unit", "reconstruction_target"]

_STRIDES = (2, 2, 2, 1)
"""Four 3x3 convolutions: 64 -> 31 -> 15 -> 7 -> 5."""


def pixels_to_unit(obs: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``[0, 255]`` ``(B, C, H, W)`` as floats in ``[-0.5, 0.5]`` (what the encoder reads and the
    decoder predicts), in the channels-last layout the convolutions are fastest in."""
    x = obs.contiguous(memory_format=torch.channels_last).to(torch.float32)
    return x.mul_(1 / 255).sub_(0.5)


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
        return self.encode_unit(pixels_to_unit(obs))

    def encode_unit(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` of observations already through :func:`pixels_to_unit`."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, self.size, self.size):
            raise InputError(f"expected observations (B, {self.in_channels}, {self.size}, {self.size}), got "
                             f"{tuple(x.shape)}", field="obs")
        return self.head(self.convs(x))


class ConvDecoder(nn.Module):
    """The encoder mirrored up to half its input's resolution: a linear layer to ``channels x 5 x 5``, then
    transposed 3x3 convolutions (strides 1, 2, 2) to the stacked observation ``(out_channels, size / 2, size / 2)``
    in the units of :func:`pixels_to_unit`, 2x2-averaged (:func:`reconstruction_target`)."""

    def __init__(self, out_channels: int, *, latent_dim: int, size: int, channels: int = 32) -> None:
        super().__init__()
        sides = [size]
        for stride in _STRIDES:
            sides.append((sides[-1] - 3) // stride + 1)
        if sides[-1] < 1 or size % 2:
            raise InputError(f"needs an even frame size >= 31, got {size}", field="decoder")
        self.out_channels, self.size, self.channels, self.side = out_channels, size, channels, sides[-1]
        self.head = nn.Sequential(nn.Linear(latent_dim, channels * self.side * self.side), nn.ReLU())
        # mirror every encoder layer but the first; the last one lands on size / 2
        targets = [*reversed(sides[2:-1]), size // 2]
        layers: list[nn.Module] = []
        into = self.side
        for i, (stride, out) in enumerate(zip(reversed(_STRIDES[1:]), targets, strict=True)):
            extra = out - ((into - 1) * stride + 3)  # what the strided encoder's floor division dropped
            last = i == len(targets) - 1
            layers.append(nn.ConvTranspose2d(channels, out_channels if last else channels, 3, stride=stride,
                                             output_padding=extra))
            if not last:
                layers.append(nn.ReLU())
            into = out
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``(B, out_channels, size / 2, size / 2)`` of latent states ``(B, latent_dim)``."""
        h = self.head(z).view(len(z), self.channels, self.side, self.side)
        return self.deconvs(h.contiguous(memory_format=torch.channels_last))


def reconstruction_target(x: torch.Tensor) -> torch.Tensor:
    """What the decoder reconstructs of stacks through :func:`pixels_to_unit` ``(B, C, H, W)``: 2x2 averages."""
    return F.avg_pool2d(x, 2)


def latent_model_loss(encoder: ConvEncoder, decoder: ConvDecoder | None, model: ForwardModel | ModelEnsemble,
                      obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, *, recon_weight: float
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of the module docstring on a minibatch (``obs``, ``next_obs`` uint8 stacks ``(B, C, H, W)``,
    ``act`` ``(B, act_dim)``); returns it and its terms (``model``, ``recon``)."""
    x = pixels_to_unit(obs)
    z = encoder.encode_unit(x)
    with torch.no_grad():  # a target: differentiating it would only cost a backward pass through the encoder
        z_next = encoder(next_obs)
    model_loss = model.loss(z, act, z_next)
    stats = {"model": float(model_loss.detach()), "recon": float("nan")}
    loss = model_loss
    if decoder is not None and recon_weight > 0:
        recon = ((decoder(z) - reconstruction_target(x)) ** 2).mean()
        stats["recon"] = float(recon.detach())
        loss = loss + recon_weight * recon
    return loss, stats
