"""A self-supervised keypoint detector: conv encoder -> spatial-softmax keypoints -> Gaussian maps -> decoder.

In the line of deep spatial autoencoders (Finn et al., 2016) and structural keypoint bottlenecks (Jakab et al.,
2018; Transporter, Kulkarni et al., 2019). The encoder turns an image into ``K`` heat maps; a spatial softmax
turns each map into the expected pixel position of a keypoint. The decoder sees *only* Gaussian blobs at those
positions and must reconstruct the image. Because the camera is fixed, the decoder composites a predicted
foreground over a learned static background image (initialised to the median training frame), so the keypoints
are spent on what moves (arm and held object), not on the table or the floor.

Keypoints are returned in pixel coordinates ``(u, v)`` (column, row; pixel centres at ``i + 0.5``), the
convention of :class:`mbirl.envs.render.Camera`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mbirl.errors import InputError

__all__ = ["DetectorConfig", "KeypointAutoencoder", "SpatialSoftmax", "check_image_size", "gaussian_maps",
           "images_to_tensor"]


MAX_KEYPOINTS = 256
"""Most learned keypoints (each is a feature map of the image's size: the bound keeps memory bounded)."""
MAX_WIDTH = 512
"""Most convolution channels."""
MAX_IMAGE_SIZE = 512
"""Largest (square) image side the detector takes."""


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture of :class:`KeypointAutoencoder` (the image size comes from the data it is trained on)."""

    n_keypoints: int = 16
    """number of learned keypoints K (at least the number of object keypoints to track)"""
    width: int = 32
    """channels of the encoder and decoder convolutions"""
    sigma: float = 1.0
    """standard deviation of the decoder's Gaussian blobs, in feature-map pixels (half the image resolution)"""

    def __post_init__(self) -> None:
        if not 1 <= self.n_keypoints <= MAX_KEYPOINTS:
            raise InputError(f"must be in [1, {MAX_KEYPOINTS}], got {self.n_keypoints}", field="n_keypoints")
        if not 4 <= self.width <= MAX_WIDTH or not (math.isfinite(self.sigma) and 0 < self.sigma <= 100):
            raise InputError(f"invalid width {self.width} (4..{MAX_WIDTH}) or sigma {self.sigma}", field="detector")


def check_image_size(image_size: int) -> int:
    """``image_size`` after checking that the detector can take square images of that size (even, >= 8)."""
    if not 8 <= image_size <= MAX_IMAGE_SIZE or image_size % 2:
        raise InputError(f"image size must be an even number in [8, {MAX_IMAGE_SIZE}], got {image_size}",
                         field="resolution")
    return image_size


def images_to_tensor(images: Any) -> torch.Tensor:
    """uint8 images ``(..., H, W, 3)`` (numpy or torch) -> float ``(..., 3, H, W)`` in ``[-0.5, 0.5]``."""
    x = torch.as_tensor(images)
    return x.movedim(-1, -3).float() / 255.0 - 0.5


class SpatialSoftmax(nn.Module):
    """Heat maps ``(B, K, h, w)`` -> expected positions ``(B, K, 2)`` in feature pixels ``(u, v)``.

    A learned temperature sharpens the softmax; the expectation is sub-pixel accurate.
    """

    def __init__(self, init_temperature: float = 1.0) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(float(init_temperature)).log())

    def forward(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, K, h, w = heatmaps.shape
        probs = torch.softmax(heatmaps.flatten(2) / self.log_temperature.exp(), dim=-1).view(B, K, h, w)
        us = torch.arange(w, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5
        vs = torch.arange(h, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5
        u = (probs.sum(2) * us).sum(-1)
        v = (probs.sum(3) * vs).sum(-1)
        return torch.stack([u, v], dim=-1), probs


def gaussian_maps(points: torch.Tensor, h: int, w: int, sigma: float) -> torch.Tensor:
    """Isotropic Gaussian blobs ``(B, K, h, w)`` centred on ``points`` ``(B, K, 2)`` (feature pixels)."""
    us = torch.arange(w, dtype=points.dtype, device=points.device) + 0.5
    vs = torch.arange(h, dtype=points.dtype, device=points.device) + 0.5
    gu = torch.exp(-((us - points[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, K, w)
    gv = torch.exp(-((vs - points[..., 1:2]) ** 2) / (2 * sigma**2))  # (B, K, h)
    return gv.unsqueeze(-1) * gu.unsqueeze(-2)


def _coords(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    v = torch.linspace(-1.0, 1.0, h, dtype=like.dtype, device=like.device)
    u = torch.linspace(-1.0, 1.0, w, dtype=like.dtype, device=like.device)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv]).expand(like.shape[0], 2, h, w)


class KeypointAutoencoder(nn.Module):
    """Encoder (image -> K keypoints) and decoder (keypoints -> image) with a static learned background.

    ``encode(x)`` gives keypoints ``(B, K, 2)`` in *image* pixels; ``forward(x)`` also returns the
    reconstruction ``(B, 3, H, W)`` in ``[-0.5, 0.5]`` and the heat-map probabilities.

    Args:
        config: the architecture (default: :class:`DetectorConfig`'s defaults).
        image_size: input images are ``image_size x image_size`` RGB (even, >= 8).
    """

    background: nn.Parameter

    def __init__(self, config: DetectorConfig | None = None, *, image_size: int) -> None:
        super().__init__()
        self.config = config if config is not None else DetectorConfig()
        self.image_size = check_image_size(image_size)
        c, K, S = self.config.width, self.config.n_keypoints, self.image_size
        self.feat = S // 2
        # Coordinate channels (CoordConv) make absolute position easy to encode for a small network.
        self.encoder = nn.Sequential(
            nn.Conv2d(5, c // 2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c // 2, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, K, 1),
        )
        self.softmax = SpatialSoftmax()
        self.decoder = nn.Sequential(
            nn.Conv2d(K + 2, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 4 * 4, 1),  # RGB + alpha for each of the 2x2 sub-pixels (pixel shuffle)
        )
        self.shuffle = nn.PixelShuffle(2)
        self.background = nn.Parameter(torch.zeros(3, S, S))

    def _check(self, x: torch.Tensor) -> None:
        S = self.image_size
        if x.ndim != 4 or x.shape[1:] != (3, S, S):
            raise InputError(f"expected images (B, 3, {S}, {S}), got {tuple(x.shape)}", field="images")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints ``(B, K, 2)`` in image pixels and heat-map probabilities ``(B, K, S/2, S/2)``."""
        self._check(x)
        h = self.encoder(torch.cat([x, _coords(x.shape[2], x.shape[3], x)], dim=1))
        kp, probs = self.softmax(h)
        return kp * (x.shape[-1] / h.shape[-1]), probs

    def decode(self, keypoints: torch.Tensor) -> torch.Tensor:
        """Reconstruct images ``(B, 3, S, S)`` from image-pixel keypoints ``(B, K, 2)``."""
        scale = self.image_size / self.feat
        maps = gaussian_maps(keypoints / scale, self.feat, self.feat, self.config.sigma)
        out = self.shuffle(self.decoder(torch.cat([maps, _coords(self.feat, self.feat, maps)], dim=1)))
        fg, alpha = torch.tanh(out[:, :3]) * 0.5, torch.sigmoid(out[:, 3:4])
        return alpha * fg + (1 - alpha) * self.background

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kp, probs = self.encode(x)
        return kp, self.decode(kp), probs

    @torch.no_grad()
    def detect(self, images: Any, batch_size: int = 256) -> torch.Tensor:
        """Keypoints of uint8 images ``(N, H, W, 3)``: ``(N, K, 2)`` pixels on the CPU, evaluated in batches on the
        model's device."""
        was_training = self.training
        self.eval()
        device = self.background.device
        out = [self.encode(images_to_tensor(torch.as_tensor(images[i:i + batch_size]).to(device)))[0].cpu()
               for i in range(0, len(images), batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.config.n_keypoints, 2)
