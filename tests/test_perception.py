"""The keypoint detector: spatial softmax, Gaussian maps, matching, lifting, and learning on a toy scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbirl.envs.render import Camera
from mbirl.errors import InputError
from mbirl.perception import (
    DetectorConfig,
    DetectorTrainConfig,
    KeypointAutoencoder,
    SpatialSoftmax,
    fit_detector,
    init_background,
    lift_keypoints,
    match_keypoints,
)
from mbirl.perception.detector import gaussian_maps
from mbirl.perception.evaluate import sample_depth, sample_depth_checked


def test_spatial_softmax_finds_a_peak_with_subpixel_accuracy():
    h = torch.full((1, 2, 8, 12), -50.0)
    h[0, 0, 3, 7] = 50.0  # row 3, column 7 -> pixel centre (7.5, 3.5)
    h[0, 1, 5, 2] = 50.0
    h[0, 1, 5, 3] = 50.0  # two equal peaks side by side -> midway
    kp, probs = SpatialSoftmax()(h)
    torch.testing.assert_close(kp[0], torch.tensor([[7.5, 3.5], [3.0, 5.5]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(probs.sum((-2, -1)), torch.ones(1, 2))


def test_gaussian_maps_peak_at_the_points():
    pts = torch.tensor([[[2.5, 6.5], [9.5, 1.5]]])
    maps = gaussian_maps(pts, 8, 12, sigma=1.0)
    assert maps.shape == (1, 2, 8, 12)
    assert maps[0, 0].argmax() == 6 * 12 + 2 and maps[0, 1].argmax() == 1 * 12 + 9
    assert maps.max() == pytest.approx(1.0)


def test_match_keypoints_recovers_a_permutation():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 64, size=(50, 2, 2))
    learned = rng.uniform(0, 64, size=(50, 5, 2))
    learned[:, 3] = truth[:, 0] + rng.normal(0, 0.5, size=(50, 2))
    learned[:, 1] = truth[:, 1] + rng.normal(0, 0.5, size=(50, 2))
    result = match_keypoints(learned, truth)
    assert result.indices == (3, 1)
    assert max(result.calibration_error) < 1.0
    with pytest.raises(InputError, match="cannot match"):
        match_keypoints(learned[:, :1], truth)
    with pytest.raises(InputError, match="expected"):
        match_keypoints(learned[:, :, :1], truth)


def test_lifting_inverts_projection():
    cam = Camera(width=32, height=32)
    pts = np.random.default_rng(1).normal([-60.0, 0.0, 80.0], 8.0, size=(3, 2, 3))
    uv, depth = cam.project(pts)
    depth_maps = np.full((3, 32, 32), 10.0, dtype=np.float32)  # far background
    for n in range(3):
        for k in range(2):
            depth_maps[n, int(uv[n, k, 1]), int(uv[n, k, 0])] = depth[n, k]
    # The nearest surface in the window is the keypoint's own pixel.
    np.testing.assert_allclose(sample_depth(depth_maps, uv), depth, rtol=1e-6)
    np.testing.assert_allclose(lift_keypoints(uv, depth_maps, cam), pts, atol=1e-3)
    with pytest.raises(InputError, match="depth maps"):
        lift_keypoints(uv, depth_maps[:, :16], cam)


def _toy_images(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A red 3x3 square moving over a static two-tone background; returns images and the square's centres."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(3.0, size - 3.0, size=(n, 2))
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    images[:] = (200, 200, 210)
    images[:, size // 2:] = (120, 140, 200)
    for i, (u, v) in enumerate(centres):
        c, r = int(u), int(v)
        images[i, r - 1:r + 2, c - 1:c + 2] = (230, 20, 20)
    return images, np.floor(centres) + 0.5


def test_detector_learns_to_track_a_moving_object():
    torch.manual_seed(0)
    images, centres = _toy_images(400)
    model = KeypointAutoencoder(DetectorConfig(n_keypoints=2, width=16, sigma=1.0), image_size=16)
    init_background(model, images)
    fit_detector(model, images[:300], DetectorTrainConfig(steps=300, batch_size=16, lr=3e-3, saliency_weight=5.0),
                 generator=torch.Generator().manual_seed(0))
    cal = model.detect(images[:300]).numpy()
    match = match_keypoints(cal, centres[:300, None])
    held = model.detect(images[300:]).numpy()[:, list(match.indices)]
    error = float(np.linalg.norm(held - centres[300:, None], axis=-1).mean())
    assert error < 1.5, error  # pixels, in a 16x16 image


def test_detector_shapes_and_input_validation():
    model = KeypointAutoencoder(DetectorConfig(n_keypoints=3, width=8), image_size=16)
    x = torch.rand(4, 3, 16, 16) - 0.5
    kp, recon, probs = model(x)
    assert kp.shape == (4, 3, 2) and recon.shape == (4, 3, 16, 16) and probs.shape == (4, 3, 8, 8)
    assert (kp >= 0).all() and (kp <= 16).all()
    assert model.detect(np.zeros((5, 16, 16, 3), dtype=np.uint8)).shape == (5, 3, 2)
    with pytest.raises(InputError, match="expected images"):
        model.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(InputError, match="uint8 images"):
        fit_detector(model, np.zeros((2, 32, 32, 3), dtype=np.uint8), DetectorTrainConfig(steps=1),
                     generator=torch.Generator())
    with pytest.raises(InputError, match="even"):
        KeypointAutoencoder(image_size=15)
    with pytest.raises(InputError, match="keypoint"):
        DetectorConfig(n_keypoints=0)


def test_depth_of_the_nearest_foreground_pixel_beside_a_small_object():
    background = np.full((12, 12), 2.0)
    depth = background[None].copy()
    depth[0, 5, 5] = 1.0  # a one-pixel object in front of the static scene
    uv = np.array([[[7.2, 5.5]]])  # a keypoint two pixels beside it
    assert sample_depth(depth, uv)[0, 0] == pytest.approx(2.0)  # the window rule sees only the floor
    assert sample_depth(depth, uv, background=background)[0, 0] == pytest.approx(1.0)
    far = np.array([[[10.5, 10.5]]])  # nothing in front of the scene nearby: fall back to the window rule
    assert sample_depth(depth, far, background=background)[0, 0] == pytest.approx(2.0)
    # ... and flag the keypoint as having lost the object.
    both = np.concatenate([uv, far], axis=1)
    d, found = sample_depth_checked(depth, both, background=background)
    np.testing.assert_allclose(d[0], [1.0, 2.0])
    assert found.tolist() == [[True, False]]
    assert sample_depth_checked(depth, both)[1].all()  # without a background nothing is flagged
    with pytest.raises(InputError, match="background"):
        sample_depth(depth, uv, background=background[:6])


def test_interrupted_detector_training_resumes_to_the_same_model():
    import copy

    images, _ = _toy_images(64)
    cfg = DetectorTrainConfig(steps=6, batch_size=8)

    def fresh() -> KeypointAutoencoder:
        torch.manual_seed(0)
        model = KeypointAutoencoder(DetectorConfig(n_keypoints=2, width=8), image_size=16)
        init_background(model, images)
        return model

    straight = fresh()
    fit_detector(straight, images, cfg, generator=torch.Generator().manual_seed(1))

    class Stop(Exception):
        pass

    saved: dict = {}
    model, gen = fresh(), torch.Generator().manual_seed(1)

    def on_step(step, scalars, state):
        if step == 3:
            saved.update(model=copy.deepcopy(model.state_dict()), optimizer=copy.deepcopy(state["optimizer"]),
                         generator=gen.get_state())
            raise Stop

    with pytest.raises(Stop):
        fit_detector(model, images, cfg, generator=gen, on_step=on_step)
    resumed, gen2 = fresh(), torch.Generator()
    resumed.load_state_dict(saved["model"])
    gen2.set_state(saved["generator"])
    fit_detector(resumed, images, cfg, generator=gen2, start_step=3, optimizer_state=saved["optimizer"])
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
