"""Figures: learning curves, demonstrations, predicted vs demonstrated keypoints, learned weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mbirl.errors import InputError  # noqa: E402
from mbirl.types import KeypointTrajectory  # noqa: E402

__all__ = ["check_figure_path", "plot_demos", "plot_learning_curves", "plot_predictions", "plot_weights", "save_figure"]

_AXES = ("x", "y", "z")


def check_figure_path(path: str | Path, field: str = "out") -> Path:
    """``path`` after checking, before any work, that a figure can be written there: an image format matplotlib
    writes (by the suffix) and a writable location (:func:`~mbirl.validation.check_output_path`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from mbirl.validation import check_output_path

    path = check_output_path(path, field=field)
    formats = FigureCanvasAgg.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise InputError(f"unknown image format '{path.suffix}' (expected one of .{', .'.join(sorted(formats))})",
                         field=field)
    return path


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out, save (creating parent folders) and close a figure; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_demos(demos: Sequence[KeypointTrajectory], path: str | Path, title: str = "demonstrations") -> Path:
    """Each demonstration's keypoints in the x-z and x-y planes (start marked, goal starred)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 1, max(len(demos), 2)))
    for i, demo in enumerate(demos):
        for k in range(demo.n_keypoints):
            kp = demo.keypoints[:, k]
            for ax, (a, b) in zip(axes, ((0, 2), (0, 1)), strict=True):
                label = f"demo {i}" if k == 0 else None
                ax.plot(kp[:, a], kp[:, b], "-o", ms=3, color=colors[i], alpha=0.8, label=label)
                ax.plot(kp[-1, a], kp[-1, b], "*", ms=10, color=colors[i])
    for ax, (a, b) in zip(axes, ((0, 2), (0, 1)), strict=True):
        ax.set_xlabel(f"{_AXES[a]} [cm]")
        ax.set_ylabel(f"{_AXES[b]} [cm]")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_learning_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                         title: str = "IRL loss") -> Path:
    """Train and test IRL loss against outer iterations, one line per cost (the seed's headline figure)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, c in curves.items():
        for ax, key in zip(axes, ("irl_loss_train", "irl_loss_test"), strict=True):
            ax.plot(np.arange(len(c[key])), c[key], label=name)
    for ax, label in zip(axes, ("train", "test"), strict=True):
        ax.set_xlabel("outer iteration")
        ax.set_ylabel(f"IRL loss on {label}")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_predictions(z_demo: np.ndarray, predictions: Mapping[str, np.ndarray], path: str | Path,
                     title: str = "predicted vs demonstrated keypoints") -> Path:
    """First keypoint in the x-z plane: the demonstration and each cost's optimised trajectory.

    ``z_demo`` is ``(B, T, D)``; each prediction is ``(B, T, D)``.
    """
    B = z_demo.shape[0]
    fig, axes = plt.subplots(1, B, figsize=(4.5 * B, 4.2), squeeze=False)
    for b in range(B):
        ax = axes[0, b]
        ax.plot(z_demo[b, :, 0], z_demo[b, :, 2], "k-o", lw=2, ms=4, label="demonstration")
        for name, z in predictions.items():
            ax.plot(z[b, :, 0], z[b, :, 2], "-o", ms=3, alpha=0.85, label=name)
        ax.set_xlabel("x [cm]")
        ax.set_ylabel("z [cm]")
        ax.set_title(f"test demo {b}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_weights(weights: Mapping[str, np.ndarray], path: str | Path, n_keypoints: int) -> Path:
    """Learned weights: bars per dimension for weighted costs, heat maps (time x dimension) for the others."""
    names = list(weights)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.8), squeeze=False)
    labels = [f"kp{k}.{a}" for k in range(n_keypoints) for a in _AXES]
    for ax, name in zip(axes[0], names, strict=False):
        w = np.asarray(weights[name])
        if w.ndim == 1:
            ax.bar(np.arange(len(w)), w)
            ax.set_xticks(np.arange(len(w)), labels[: len(w)], rotation=45, fontsize=7)
        else:
            im = ax.imshow(w, aspect="auto", cmap="coolwarm", vmin=-abs(w).max(), vmax=abs(w).max())
            ax.set_xticks(np.arange(w.shape[1]), labels[: w.shape[1]], rotation=45, fontsize=7)
            ax.set_ylabel("time step")
            fig.colorbar(im, ax=ax)
        ax.set_title(name)
    return save_figure(fig, path)
