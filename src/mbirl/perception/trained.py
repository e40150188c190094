"""A trained keypoint detector as the rest of the pipeline uses it: images + depth -> matched 3-D keypoints.

:class:`TrainedDetector` bundles the autoencoder with the indices of its keypoints matched to the object's (see
:mod:`mbirl.perception.evaluate`), the camera it was trained with and the static scene's depth. It is saved in
a run directory as ``detector.{json,safetensors}`` (a checkpoint, see :mod:`mbirl.reporting.checkpoint`) and
read back with :meth:`TrainedDetector.load`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.envs.render import Camera
from mbirl.errors import InputError
from mbirl.perception.detector import DetectorConfig, KeypointAutoencoder
from mbirl.perception.evaluate import lift_keypoints_checked

__all__ = ["DETECTOR_FILE", "TrainedDetector"]

DETECTOR_FILE = "detector"
"""Checkpoint stem of a trained detector inside its run directory."""


@dataclass
class TrainedDetector:
    """A trained detector with its matched object keypoints and camera: images + depth -> 3-D keypoints."""

    model: KeypointAutoencoder
    """the keypoint autoencoder"""
    matched: tuple[int, ...]
    """indices of the learned keypoints matched to the object keypoints, in the object keypoints' order"""
    camera: Camera
    """the camera of the images it was trained on (lifting to 3-D needs it)"""
    background_depth: np.ndarray | None = None
    """``(H, W)`` depth of the static scene, metres (None: no foreground check when lifting)"""

    def image_keypoints(self, images: np.ndarray) -> np.ndarray:
        """Matched keypoints ``(N, k, 2)`` (pixels) of uint8 frames ``(N, H, W, 3)``."""
        return self.model.detect(images).numpy()[:, list(self.matched)]

    def keypoints_3d(self, images: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Matched keypoints lifted to 3-D with the depth maps ``(N, H, W)``: ``(N, k, 3)`` (robot units)."""
        return self.keypoints_3d_checked(images, depth)[0]

    def keypoints_3d_checked(self, images: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`keypoints_3d` and whether each keypoint sat on a foreground object, ``(N, k)`` bool (False: the
        keypoint lost the object, its depth is the static scene's; such frames are left out of training)."""
        return lift_keypoints_checked(self.image_keypoints(images), depth, self.camera,
                                      background=self.background_depth)

    def save(self, run_dir: str | Path) -> None:
        """Write ``RUN_DIR/detector.{json,safetensors}`` (crash-safe; read back with :meth:`load`)."""
        from mbirl.reporting.checkpoint import save_checkpoint
        from mbirl.validation import config_to_dict

        state: dict[str, Any] = {"model": self.model.state_dict(), "config": config_to_dict(self.model.config),
                                 "image_size": self.model.image_size, "matched": list(self.matched),
                                 "camera": self.camera.to_meta()}
        if self.background_depth is not None:
            state["background_depth"] = torch.as_tensor(self.background_depth, dtype=torch.float32)
        save_checkpoint(Path(run_dir) / DETECTOR_FILE, state)

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainedDetector:
        """Read the detector that :meth:`save` (``mbirl visual train-detector``) wrote into ``run_dir``.

        Raises InputError when ``run_dir`` holds no detector or an inconsistent one.
        """
        from mbirl.reporting.checkpoint import load_checkpoint, restoring
        from mbirl.validation import config_from_dict

        run_dir = Path(run_dir)
        where = str(run_dir / f"{DETECTOR_FILE}.json")
        if not (run_dir / f"{DETECTOR_FILE}.json").is_file():
            raise InputError("no trained detector here (run `mbirl visual train-detector` first)", source=str(run_dir))
        state = load_checkpoint(run_dir / DETECTOR_FILE)
        with restoring(where, "inconsistent detector file"):
            saved = dict(state["config"])
            # detectors saved before the image size left DetectorConfig carry it there
            image_size = int(state["image_size"] if "image_size" in state else saved.pop("image_size"))
            config = config_from_dict(DetectorConfig, saved, source=where)
            model = KeypointAutoencoder(config, image_size=image_size)
            model.load_state_dict(state["model"])
            matched = tuple(int(i) for i in state["matched"])
            background = state.get("background_depth")
            background_depth = None if background is None else background.numpy().astype(np.float64)
            camera = Camera.from_meta(state["camera"], where)
        model.eval()
        if background_depth is not None and background_depth.shape != (camera.height, camera.width):
            raise InputError("background depth does not match the camera", source=where)
        if (camera.height, camera.width) != (image_size, image_size):
            raise InputError(f"the detector takes {image_size}x{image_size} images, its camera is "
                             f"{camera.width}x{camera.height}", source=where)
        if not matched or any(not 0 <= i < config.n_keypoints for i in matched):
            raise InputError(f"matched keypoints {list(matched)} out of range for {config.n_keypoints} keypoints",
                             source=where)
        return cls(model, matched, camera, background_depth)
