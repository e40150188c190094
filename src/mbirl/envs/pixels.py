"""Pixel observations: an environment's state drawn as a 64x64 RGB frame, the last ``k`` frames stacked.

:class:`PixelObservation` wraps a gymnasium environment whose observation is its state vector: every reset and
step draws the state as a frame and the observation becomes the ``(3 k, 64, 64)`` uint8 stack of the last ``k``
frames, oldest first (channels ``3 i .. 3 i + 2`` hold frame ``i``; a reset repeats its first frame ``k`` times),
so velocities can be read from the differences between frames. The state itself stays in ``info["state"]`` for
evaluation, rendering and tests; the learner never sees it.

A frame is a deterministic function of the state observation rounded to float32, the precision demonstration
files store. A demonstration rendered from its stored states (:func:`render_trajectory`) therefore holds exactly
the frames the agent would have seen in those states.

Renderers (:data:`PIXEL_RENDERERS`, by environment id):

* ``Pendulum-v1``: a numpy rasteriser of the rod and its axle (anti-aliased: each pixel takes the fraction of it
  the shape covers), from ``(cos theta, sin theta)``; gymnasium's own renderer needs pygame, which this package does
  not use, and would draw the applied torque too (the action would leak into the observation).
* ``InvertedPendulum-v5``: MuJoCo's offscreen ``mujoco.Renderer`` (EGL unless ``MUJOCO_GL`` is set) with shadows,
  reflections, skybox and multisampling off (what keeps it fast on a CPU), on a data structure of its own whose
  ``qpos`` is set from the observation ``[qpos, qvel]`` and whose kinematics are recomputed before drawing: the
  environment's own data after ``mj_step`` still holds the previous step's body positions.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from mbirl.errors import InputError
from mbirl.registry import Registry

__all__ = ["PIXEL_RENDERERS", "PIXEL_SIZE", "MujocoStateRenderer", "PendulumRenderer", "PixelObservation",
           "StateRenderer", "check_pixel_env", "make_pixel_env", "render_trajectory", "set_env_state",
           "stack_indices"]

PIXEL_SIZE = 64
"""Side of a pixel observation's frames (the MAIRL paper's 64x64)."""

MAX_FRAME_STACK = 16
"""The most frames one observation may stack."""


def _offscreen_renderer(model: Any, size: int) -> Any:
    """``mujoco.Renderer`` on EGL unless ``MUJOCO_GL`` names another backend. MuJoCo picks its GL backend once, when
    ``mujoco`` is first imported: a process that imported it before ``MUJOCO_GL`` was set (any MuJoCo environment
    made earlier) would get GLFW, which aborts the process without a display. The EGL context is passed to the
    renderer for its construction only, as Gymnasium's own offscreen viewer chooses its backend when it is made."""
    import platform

    import mujoco
    from mujoco.rendering.classic import gl_context

    wanted = os.environ.get("MUJOCO_GL", "egl").lower()
    if platform.system() != "Linux" or wanted != "egl":
        return mujoco.Renderer(model, size, size)
    from mujoco.egl import GLContext

    chosen = gl_context.GLContext
    gl_context.GLContext = GLContext
    try:
        return mujoco.Renderer(model, size, size)
    finally:
        gl_context.GLContext = chosen


class StateRenderer(ABC):
    """Draws an environment's state observation as an RGB frame ``(size, size, 3)`` uint8."""

    size: int
    state_dim: int

    def check_states(self, states: np.ndarray, *, source: str | None = None) -> np.ndarray:
        """``states`` ``(N, state_dim)`` as float32 after checking that every one is a state the renderer can set
        (an InputError naming the first that is not)."""
        states = np.asarray(states)
        if states.ndim != 2 or states.shape[1] != self.state_dim:
            raise InputError(f"expected states of shape (N, {self.state_dim}), got {states.shape}", source=source,
                             field="obs")
        states = states.astype(np.float32)
        bad = ~np.isfinite(states).all(1)
        if bad.any():
            raise InputError(f"state {int(np.argmax(bad))} is not finite: it cannot be set to render it",
                             source=source, field="obs")
        return states

    def render(self, state: np.ndarray) -> np.ndarray:
        """One frame ``(size, size, 3)`` uint8 of one state ``(state_dim,)``."""
        return self.render_batch(np.asarray(state)[None])[0]

    @abstractmethod
    def render_batch(self, states: np.ndarray) -> np.ndarray:
        """Frames ``(N, size, size, 3)`` uint8 of the states ``(N, state_dim)`` (rounded to float32 first)."""

    def close(self) -> None:  # noqa: B027 (most renderers hold nothing)
        """Release what the renderer holds (a GL context)."""


class PendulumRenderer(StateRenderer):
    """Pendulum-v1 without pygame: a red rod from the centre (length 0.42 of the frame, half-width 0.045) and a
    black axle on white, drawn from the observation ``[cos theta, sin theta, theta_dot]``.

    ``theta = 0`` is upright and positive angles turn the rod counter-clockwise, as gymnasium's own renderer draws
    them. Edges are anti-aliased by coverage, ``clip(r + 0.5 - d, 0, 1)`` for a pixel centre at distance ``d`` from
    a shape of radius ``r``: elementwise float32 operations only, so a frame is the same whether it is drawn alone
    or in a batch.
    """

    state_dim = 3
    BACKGROUND = np.array([255.0, 255.0, 255.0], np.float32)
    ROD = np.array([204.0, 77.0, 77.0], np.float32)
    AXLE = np.array([0.0, 0.0, 0.0], np.float32)

    def __init__(self, size: int = PIXEL_SIZE) -> None:
        if size < 8:
            raise InputError(f"must be >= 8, got {size}", field="size")
        self.size = size
        centres = np.arange(size, dtype=np.float32) + np.float32(0.5)
        c = np.float32(size / 2)
        self._py, self._px = np.meshgrid(centres - c, centres - c, indexing="ij")  # offsets from the axle
        self._c = c
        self._length = np.float32(0.42 * size)
        self._half_width = np.float32(0.045 * size)
        axle = np.clip(np.float32(0.03 * size + 0.5) - np.sqrt(self._px**2 + self._py**2), 0, 1)[..., None]
        # the axle does not move: frame = (rod over background) * (1 - axle) + AXLE * axle
        self._keep = (1 - axle).astype(np.float32)
        self._axle = (self.AXLE * axle).astype(np.float32)
        self._empty = np.rint(self.BACKGROUND * self._keep + self._axle).astype(np.uint8)

    def check_states(self, states: np.ndarray, *, source: str | None = None) -> np.ndarray:
        states = super().check_states(states, source=source)
        radius = np.hypot(states[:, 0], states[:, 1])
        bad = np.abs(radius - 1) > 1e-3
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"state {i} has cos^2 + sin^2 = {radius[i] ** 2:.4f}, not 1: it is not a Pendulum state "
                             "(theta = atan2(sin, cos) cannot be set)", source=source, field="obs")
        return states

    def render_batch(self, states: np.ndarray) -> np.ndarray:
        s = np.asarray(states, dtype=np.float32)
        out = np.empty((len(s), self.size, self.size, 3), np.uint8)
        length, reach = self._length, self._half_width + np.float32(1.5)
        for i in range(len(s)):
            dx, dy = -length * s[i, 1], -length * s[i, 0]  # tip offset; image rows grow downwards
            # only pixels near the rod can be covered: the rest is the empty frame
            c0 = max(0, int(math.floor(self._c + min(0.0, dx) - reach)))
            c1 = min(self.size, int(math.ceil(self._c + max(0.0, dx) + reach)))
            r0 = max(0, int(math.floor(self._c + min(0.0, dy) - reach)))
            r1 = min(self.size, int(math.ceil(self._c + max(0.0, dy) + reach)))
            out[i] = self._empty
            px, py = self._px[r0:r1, c0:c1], self._py[r0:r1, c0:c1]
            t = np.clip((px * dx + py * dy) / (length * length), np.float32(0), np.float32(1))
            dist = np.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2)
            rod = np.clip(self._half_width + np.float32(0.5) - dist, np.float32(0), np.float32(1))[..., None]
            img = (self.BACKGROUND + (self.ROD - self.BACKGROUND) * rod) * self._keep[r0:r1, c0:c1] + \
                self._axle[r0:r1, c0:c1]
            out[i, r0:r1, c0:c1] = np.rint(img)
        return out


class MujocoStateRenderer(StateRenderer):
    """A MuJoCo environment's state observation ``[qpos, qvel]`` drawn by ``mujoco.Renderer`` offscreen.

    Args:
        env_id: the environment (its model is taken from ``gymnasium.make``).
        size: frame side in pixels.
        lookat, distance, azimuth, elevation: the fixed free camera.
    """

    def __init__(self, env_id: str, size: int = PIXEL_SIZE, *, lookat: tuple[float, float, float],
                 distance: float, azimuth: float, elevation: float) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import mujoco

        from mbirl.experts.rollout import make_env

        self.size = size
        self._env = make_env(env_id)
        model = self._env.unwrapped.model
        self._nq, self._nv = int(model.nq), int(model.nv)
        self.state_dim = int(np.prod(self._env.observation_space.shape))
        if self.state_dim != self._nq + self._nv:
            self._env.close()
            raise InputError(f"its observations (size {self.state_dim}) are not [qpos, qvel] (size "
                             f"{self._nq + self._nv}): a state cannot be set from them to render it",
                             source=env_id, field="obs")
        model.vis.quality.offsamples = 0  # no multisampling: the render model is ours, the physics do not read it
        try:
            self._renderer = _offscreen_renderer(model, size)
        except Exception as exc:  # no GL context (MUJOCO_GL names a backend this machine lacks)
            self._env.close()
            raise InputError(f"MuJoCo cannot render offscreen with MUJOCO_GL={os.environ.get('MUJOCO_GL')} "
                             f"({type(exc).__name__}: {exc})", source=env_id, field="obs") from None
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX):
            self._renderer.scene.flags[flag] = False
        self._model, self._data = model, mujoco.MjData(model)
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self._camera.lookat[:] = lookat
        self._camera.distance, self._camera.azimuth, self._camera.elevation = distance, azimuth, elevation
        self._mujoco = mujoco

    def render_batch(self, states: np.ndarray) -> np.ndarray:
        mj = self._mujoco
        states = np.asarray(states, dtype=np.float32)
        out = np.empty((len(states), self.size, self.size, 3), np.uint8)
        for i, state in enumerate(states):
            self._data.qpos[:] = state[: self._nq]
            mj.mj_kinematics(self._model, self._data)
            mj.mj_camlight(self._model, self._data)
            self._renderer.update_scene(self._data, self._camera)
            self._renderer.render(out=out[i])
        return out

    def close(self) -> None:
        self._renderer.close()
        self._env.close()


PIXEL_RENDERERS = Registry[StateRenderer]("pixel renderer")
"""The environments ``--obs pixels`` can draw, by id: ``PIXEL_RENDERERS.make(env_id, size=64)``."""


@PIXEL_RENDERERS.register("Pendulum-v1")
def _pendulum(*, size: int = PIXEL_SIZE) -> StateRenderer:
    return PendulumRenderer(size)


@PIXEL_RENDERERS.register("InvertedPendulum-v5")
def _inverted_pendulum(*, size: int = PIXEL_SIZE) -> StateRenderer:
    # side view of the 0.6 m pole and the whole rail: the cart (+-1 m) never leaves the frame
    return MujocoStateRenderer("InvertedPendulum-v5", size, lookat=(0.0, 0.0, 0.25), distance=2.5, azimuth=90.0,
                               elevation=0.0)


def check_pixel_env(env_id: str, *, field: str = "obs") -> None:
    """An InputError unless ``env_id`` has a pixel renderer."""
    if env_id not in PIXEL_RENDERERS:
        raise InputError(f"no pixel renderer for '{env_id}': pixel observations are drawn for "
                         f"{', '.join(PIXEL_RENDERERS.names)} (use --obs state)", field=field)


def _check_frame_stack(frame_stack: int) -> None:
    if not 1 <= frame_stack <= MAX_FRAME_STACK:
        raise InputError(f"must be in [1, {MAX_FRAME_STACK}], got {frame_stack}", field="frame_stack")


class PixelObservation(gym.Wrapper):
    """Observations are stacks of the last ``frame_stack`` frames ``(3 k, size, size)`` uint8 (oldest first), drawn
    by ``renderer`` from the wrapped environment's state observation, which ``info["state"]`` keeps. The wrapper
    owns the renderer (closing it closes the renderer)."""

    def __init__(self, env: Any, renderer: StateRenderer, frame_stack: int) -> None:
        _check_frame_stack(frame_stack)
        super().__init__(env)
        self.renderer, self.frame_stack = renderer, frame_stack
        self.observation_space = gym.spaces.Box(0, 255, (3 * frame_stack, renderer.size, renderer.size), np.uint8)
        self._frames: deque[np.ndarray] = deque(maxlen=frame_stack)

    def _frame(self, state: Any) -> np.ndarray:
        return np.ascontiguousarray(self.renderer.render(np.asarray(state).reshape(-1)).transpose(2, 0, 1))

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        state, info = self.env.reset(**kwargs)
        frame = self._frame(state)
        self._frames.clear()
        self._frames.extend([frame] * self.frame_stack)
        return np.concatenate(self._frames), {**info, "state": state}

    def step(self, action: Any) -> tuple[np.ndarray, Any, bool, bool, dict[str, Any]]:
        state, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(self._frame(state))
        return np.concatenate(self._frames), reward, terminated, truncated, {**info, "state": state}

    def close(self) -> None:
        self.renderer.close()
        super().close()


def make_pixel_env(env_id: str, *, frame_stack: int, size: int = PIXEL_SIZE) -> Any:
    """``env_id`` with pixel observations (:class:`PixelObservation`); an InputError when it has no renderer."""
    from mbirl.experts.rollout import make_env

    check_pixel_env(env_id)
    _check_frame_stack(frame_stack)
    renderer = PIXEL_RENDERERS.make(env_id, size=size)
    return PixelObservation(make_env(env_id), renderer, frame_stack)


def stack_indices(length: int, frame_stack: int) -> np.ndarray:
    """``(length, frame_stack)`` frame indices of the stacked observation at each step of an episode of
    ``length`` frames: row ``t`` is ``t - k + 1 .. t`` clipped at 0 (a reset repeats its first frame)."""
    steps = np.arange(length)[:, None] + np.arange(-frame_stack + 1, 1)[None]
    return np.maximum(steps, 0)


def render_trajectory(renderer: StateRenderer, states: np.ndarray, *, source: str | None = None) -> np.ndarray:
    """The frames ``(T, 3, size, size)`` uint8 of an episode's states ``(T, state_dim)``, checked first
    (:meth:`StateRenderer.check_states`: an InputError names a state that cannot be set). Stack them with
    :func:`stack_indices`."""
    states = renderer.check_states(states, source=source)
    return np.ascontiguousarray(renderer.render_batch(states).transpose(0, 3, 1, 2))


def set_env_state(env: Any, state: np.ndarray) -> None:
    """Put a Pendulum-v1 or MuJoCo environment (after a reset) into the state of observation ``state``:
    Pendulum ``theta = atan2(sin, cos)``, ``theta_dot``; MuJoCo ``qpos, qvel = state[:nq], state[nq:]``."""
    base = env.unwrapped
    state = np.asarray(state, dtype=np.float64).reshape(-1)
    if hasattr(base, "set_state") and hasattr(base, "model"):
        nq, nv = int(base.model.nq), int(base.model.nv)
        if len(state) != nq + nv:
            raise InputError(f"observation of size {len(state)} is not [qpos, qvel] (size {nq + nv})", field="obs")
        base.set_state(state[:nq], state[nq:])
    elif base.spec is not None and base.spec.id == "Pendulum-v1":
        base.state = np.array([math.atan2(state[1], state[0]), state[2]])
    else:
        raise InputError("cannot set the state of this environment", field="obs",
                         source=getattr(base.spec, "id", None))
