"""Self-supervised training of the keypoint autoencoder on exploration images.

Loss: per-pixel squared reconstruction error, weighted by ``1 + saliency_weight * |x - background|`` (the
colour distance of the target pixel from the median frame). With a fixed camera the median frame is the static
scene, so the weight is large where something moved or is strongly coloured (the held object's markers); a
plain mean squared error spends every keypoint on the large arm links and lets the small object blur.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mbirl.errors import InputError, check_finite
from mbirl.perception.detector import KeypointAutoencoder, images_to_tensor
from mbirl.reporting.checkpoint import load_optimizer_state

__all__ = ["DetectorTrainConfig", "detector_optimizer", "fit_detector", "init_background", "median_frame"]


@dataclass
class DetectorTrainConfig:
    """Optimisation of :class:`KeypointAutoencoder` (the minibatch order comes from the caller's generator)."""

    steps: int = 3000
    """gradient steps"""
    batch_size: int = 32
    """images per step"""
    lr: float = 2e-3
    """Adam learning rate (cosine-decayed to 5% of it)"""
    saliency_weight: float = 5.0
    """extra loss weight of pixels that differ from the static background (see the module docstring)"""

    def __post_init__(self) -> None:
        if self.steps < 0 or not 1 <= self.batch_size <= 4096 or not (math.isfinite(self.lr) and self.lr > 0) \
                or not (math.isfinite(self.saliency_weight) and self.saliency_weight >= 0):
            raise InputError(f"invalid detector training settings (steps {self.steps}, batch {self.batch_size}, "
                             f"lr {self.lr}, saliency weight {self.saliency_weight})", field="detector")


def median_frame(images: np.ndarray, max_frames: int = 2000) -> torch.Tensor:
    """Per-pixel median ``(3, H, W)`` of (up to ``max_frames`` evenly spaced) uint8 images: the static scene."""
    step = max(1, len(images) // max_frames)
    return images_to_tensor(images[::step]).median(0).values


def init_background(model: KeypointAutoencoder, images: np.ndarray, max_frames: int = 2000) -> None:
    """Set the decoder's background to the median training frame."""
    with torch.no_grad():
        model.background.copy_(median_frame(images, max_frames))


def detector_optimizer(model: KeypointAutoencoder, cfg: DetectorTrainConfig) -> torch.optim.Optimizer:
    """The optimiser :func:`fit_detector` trains ``model`` with (a checkpoint keeps its state)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def fit_detector(model: KeypointAutoencoder, images: np.ndarray, cfg: DetectorTrainConfig, *,
                 generator: torch.Generator, start_step: int = 0, optimizer_state: dict[str, Any] | None = None,
                 on_step: Callable[[int, dict[str, float], dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train on uint8 images ``(N, H, W, 3)``; ``on_step(step, scalars, state)`` after every step.

    ``state`` carries the optimiser state (``generator`` carries the minibatch order) so a run can resume at
    ``start_step``. Call :func:`init_background` first on a fresh model. The images stay in host memory; each
    minibatch goes to the model's device.
    """
    S = model.image_size
    if images.ndim != 4 or images.shape[1:] != (S, S, 3) or images.dtype != np.uint8:
        raise InputError(f"expected uint8 images (N, {S}, {S}, 3), got {images.dtype} {images.shape}", field="images")
    data = torch.from_numpy(images)
    device = model.background.device
    background = median_frame(images).to(device)  # fixed saliency reference (the same on resume)
    opt = detector_optimizer(model, cfg)
    if optimizer_state is not None:
        load_optimizer_state(opt, optimizer_state)
    model.train()
    for step in range(start_step + 1, cfg.steps + 1):
        lr = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - 1) / max(cfg.steps, 1))))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(data), (min(cfg.batch_size, len(data)),), generator=generator)
        x = images_to_tensor(data[idx].to(device))
        _, recon, _ = model(x)
        weight = 1.0 + cfg.saliency_weight * (x - background).abs().sum(1)
        loss = ((recon - x).pow(2).sum(1) * weight).mean()
        check_finite(loss, "detector reconstruction loss", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # measures only
        check_finite(grad_norm, "detector gradient norm", step)
        opt.step()
        if on_step is not None:
            on_step(step, {"losses/reconstruction": float(loss.detach()), "charts/lr": lr,
                           "charts/softmax_temperature": float(model.softmax.log_temperature.detach().exp())},
                    {"optimizer": opt.state_dict()})
    model.eval()
    return {"optimizer": opt.state_dict()}
