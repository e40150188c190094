"""Evaluating a keypoint detector against projected ground truth, and lifting image keypoints to 3-D.

Matching: a self-supervised detector's keypoints have no names. On *calibration* frames we assign each
ground-truth keypoint (projected to pixels with the known camera) to a distinct learned keypoint, minimising the
summed mean pixel distance (an exact assignment); the pixel error is then measured on *held-out* frames. The
matched learned keypoints are the object keypoints the visual pipeline uses: the only use of labels is choosing
``k`` indices out of ``K``, as one would pick them by eye.

Lifting (2-D -> 3-D): with a fixed, calibrated camera and PyBullet's depth buffer we unproject the keypoint's
pixel at its depth. We chose this over learning in image space because the lifted keypoints are metric
(centimetres, robot base frame) like the ground-truth pipeline's, so the same costs, learning rates, IRL loss and
relative goal distance apply unchanged and the two pipelines can be compared number for number. The depth is
that of the foreground pixel (nearer than the static scene's depth, the median training depth map) closest to
the keypoint: a keypoint one or two pixels beside a small marker would otherwise take the depth of the floor
behind it (errors of metres in ~2% of frames). The result lies on the marker's front surface, a near-constant
offset of about one marker radius that cancels in goal-relative costs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from mbirl.envs.render import Camera
from mbirl.errors import InputError

__all__ = ["MatchResult", "lift_keypoints", "lift_keypoints_checked", "match_keypoints", "sample_depth",
           "sample_depth_checked"]


@dataclass(frozen=True)
class MatchResult:
    """Assignment of ground-truth keypoints to learned ones.

    Attributes:
        indices: for each ground-truth keypoint, the index of its learned keypoint, ``(k,)``.
        calibration_error: mean pixel distance of each matched pair on the calibration frames, ``(k,)``.
    """

    indices: tuple[int, ...]
    calibration_error: tuple[float, ...]


def match_keypoints(learned: np.ndarray, truth: np.ndarray) -> MatchResult:
    """Assign ground-truth keypoints ``(N, k, 2)`` to distinct learned keypoints ``(N, K, 2)`` (pixels).

    Minimises the sum over pairs of the mean Euclidean distance over frames; exact (all ordered ``k``-subsets
    of ``K``), which is cheap for the few object keypoints of the task.
    """
    learned = np.asarray(learned, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if learned.ndim != 3 or truth.ndim != 3 or learned.shape[0] != truth.shape[0] or learned.shape[-1] != 2 \
            or truth.shape[-1] != 2:
        raise InputError(f"expected (N, K, 2) and (N, k, 2), got {learned.shape} and {truth.shape}", field="keypoints")
    K, k = learned.shape[1], truth.shape[1]
    if k > K:
        raise InputError(f"cannot match {k} ground-truth keypoints to {K} learned ones", field="n_keypoints")
    dist = np.linalg.norm(truth[:, :, None] - learned[:, None], axis=-1).mean(0)  # (k, K)
    if sum(1 for _ in itertools.islice(itertools.permutations(range(K), k), 200_001)) <= 200_000:
        best: tuple[int, ...] = min(itertools.permutations(range(K), k),
                                    key=lambda p: sum(dist[i, j] for i, j in enumerate(p)))
    else:  # greedy fallback for very many keypoints
        chosen: list[int] = []
        for i in range(k):
            order = np.argsort(dist[i])
            chosen.append(int(next(j for j in order if j not in chosen)))
        best = tuple(chosen)
    return MatchResult(tuple(int(j) for j in best), tuple(float(dist[i, j]) for i, j in enumerate(best)))


def sample_depth(depth: np.ndarray, uv: np.ndarray, window: int = 1, *, background: np.ndarray | None = None,
                 radius: int = 2, margin: float = 0.02) -> np.ndarray:
    """Depth at each keypoint, ``(N, K)`` metres (see :func:`sample_depth_checked`)."""
    return sample_depth_checked(depth, uv, window, background=background, radius=radius, margin=margin)[0]


def sample_depth_checked(depth: np.ndarray, uv: np.ndarray, window: int = 1, *,
                         background: np.ndarray | None = None, radius: int = 2, margin: float = 0.02
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Depth at each keypoint: ``(N, K)`` metres from depth maps ``(N, H, W)`` and pixels ``(N, K, 2)``.

    Without ``background``: the nearest surface in a ``(2 window + 1)^2`` window. With the static scene's depth
    ``background (H, W)``: the depth of the *foreground* pixel (nearer than the background by ``margin``)
    closest to the keypoint within ``radius`` pixels, so a keypoint a pixel or two beside a small object does
    not take the depth of the wall behind it; the window rule is the fall-back where no foreground is near.
    Returns ``(depth (N, K), found (N, K))``: ``found`` is False where no foreground pixel was near the keypoint
    (a keypoint that lost the object; always True without ``background``).
    """
    N, H, W = depth.shape
    col = np.floor(uv[..., 0]).astype(np.int64)
    row = np.floor(uv[..., 1]).astype(np.int64)
    frames = np.arange(N)[:, None]
    best = np.full(col.shape, np.inf)
    for dr in range(-window, window + 1):
        for dc in range(-window, window + 1):
            r, c = np.clip(row + dr, 0, H - 1), np.clip(col + dc, 0, W - 1)
            best = np.minimum(best, depth[frames, r, c])
    if background is None:
        return best, np.ones(best.shape, dtype=bool)
    if background.shape != (H, W):
        raise InputError(f"background depth is {background.shape}, depth maps are {(H, W)}", field="depth")
    closest = np.full(col.shape, np.inf)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r, c = row + dr, col + dc
            inside = (r >= 0) & (r < H) & (c >= 0) & (c < W)
            r, c = np.clip(r, 0, H - 1), np.clip(c, 0, W - 1)
            d = depth[frames, r, c]
            fg = inside & (d < background[r, c] - margin)
            dist = (c + 0.5 - uv[..., 0]) ** 2 + (r + 0.5 - uv[..., 1]) ** 2
            take = fg & (dist < closest)
            closest = np.where(take, dist, closest)
            best = np.where(take, d, best)
    return best, np.isfinite(closest)


def lift_keypoints(uv: np.ndarray, depth: np.ndarray, camera: Camera, window: int = 1,
                   background: np.ndarray | None = None) -> np.ndarray:
    """Pixel keypoints ``(N, K, 2)`` + depth maps ``(N, H, W)`` -> 3-D keypoints ``(N, K, 3)`` (robot units).

    ``background``: the static scene's depth map, for the foreground rule of :func:`sample_depth`.
    """
    return lift_keypoints_checked(uv, depth, camera, window, background)[0]


def lift_keypoints_checked(uv: np.ndarray, depth: np.ndarray, camera: Camera, window: int = 1,
                           background: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lift_keypoints` and whether each keypoint was on a foreground object, ``(N, K)`` bool."""
    uv = np.asarray(uv, dtype=np.float64)
    if depth.shape[1:] != (camera.height, camera.width):
        raise InputError(f"depth maps are {depth.shape[1:]}, the camera is {camera.height}x{camera.width}",
                         field="depth")
    d, found = sample_depth_checked(depth, uv, window, background=background)
    return camera.unproject(uv, d).astype(np.float32), found
