"""Figures of the visual pipeline: keypoints overlaid on frames, reconstructions, dynamics rollouts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mbirl.reporting.plots import save_figure  # noqa: E402

__all__ = ["plot_dynamics_rollouts", "plot_keypoint_overlay", "plot_visual_vs_gt"]




def plot_keypoint_overlay(images: np.ndarray, learned: np.ndarray, path: str | Path, *,
                          truth: np.ndarray | None = None, matched: Sequence[int] = (),
                          reconstructions: np.ndarray | None = None, title: str = "learned keypoints",
                          ncols: int | None = None) -> Path:
    """Frames ``(F, H, W, 3)`` with learned keypoints ``(F, K, 2)`` (small dots; matched ones circled) and the
    projected ground truth ``(F, k, 2)`` (crosses); optionally a second row of reconstructions ``(F, H, W, 3)``.
    Without reconstructions, ``ncols`` wraps the frames into a grid."""
    F = len(images)
    cols = F if reconstructions is not None or ncols is None else min(ncols, F)
    rows = 2 if reconstructions is not None else -(-F // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    K = learned.shape[1]
    colours = plt.cm.tab10(np.arange(K) % 10)
    for f in range(F):
        ax = axes[f // cols, f % cols] if reconstructions is None else axes[0, f]
        H, W = images[f].shape[:2]
        ax.imshow(images[f], extent=(0, W, H, 0), interpolation="nearest")
        ax.scatter(learned[f, :, 0], learned[f, :, 1], s=12, c=colours, edgecolors="k", linewidths=0.4)
        for i, j in enumerate(matched):
            ax.scatter(learned[f, j, 0], learned[f, j, 1], s=70, facecolors="none", edgecolors="yellow",
                       linewidths=1.2, label="matched" if (f == 0 and i == 0) else None)
        if truth is not None:
            ax.scatter(truth[f, :, 0], truth[f, :, 1], s=40, marker="x", c="white", linewidths=1.2,
                       label="ground truth" if f == 0 else None)
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.axis("off")
        if reconstructions is not None:
            axes[1, f].imshow(reconstructions[f], extent=(0, W, H, 0), interpolation="nearest")
            axes[1, f].axis("off")
    if F and (truth is not None or len(matched) > 0):
        axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_dynamics_rollouts(true_z: np.ndarray, pred_z: np.ndarray, path: str | Path,
                           title: str = "learned dynamics: open-loop rollouts") -> Path:
    """Held-out trajectories ``(B, T, k, 3)``: true (black) and open-loop predicted (coloured) keypoints, x-z."""
    B = min(len(true_z), 6)
    fig, axes = plt.subplots(1, B, figsize=(3.2 * B, 3.2), squeeze=False)
    for b in range(B):
        ax = axes[0, b]
        for k in range(true_z.shape[2]):
            ax.plot(true_z[b, :, k, 0], true_z[b, :, k, 2], "k-o", ms=3, lw=1.5, label="data" if k == 0 else None)
            ax.plot(pred_z[b, :, k, 0], pred_z[b, :, k, 2], "-o", ms=2.5, lw=1.2, color=f"C{k}",
                    label=f"model kp{k}")
        ax.set_xlabel("x [cm]")
        ax.set_ylabel("z [cm]")
        ax.grid(alpha=0.3)
        ax.set_aspect("equal", adjustable="datalim")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_visual_vs_gt(results: Mapping[str, Mapping[str, float]], path: str | Path,
                      title: str = "test IRL loss on the true robot: visual vs ground-truth pipeline") -> Path:
    """Bars per method: ``results[method] = {"visual": loss, "gt": loss}`` (log scale)."""
    methods = list(results)
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(1.4 * max(len(methods), 3) + 1.5, 3.8))
    ax.bar(x - 0.2, [results[m]["gt"] for m in methods], 0.4, label="ground-truth keypoints + true kinematics")
    ax.bar(x + 0.2, [results[m]["visual"] for m in methods], 0.4, label="detector keypoints + learned dynamics")
    ax.set_xticks(x, methods)
    ax.set_yscale("log")
    ax.set_ylabel("final test IRL loss (true robot, GT keypoints)")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
