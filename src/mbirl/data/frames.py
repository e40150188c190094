"""Transitions of frame-stacked pixel observations, each frame held once.

A stacked observation ``(3 k, H, W)`` shares ``k - 1`` frames with the next one, and a transition's next
observation is its observation shifted by one frame. Stored as stacks, a 50,000-transition replay of 64x64x3
frames stacked by 3 would take 3.7 GB; :class:`FrameReplayBuffer` keeps every frame once (about 12 KB a
transition) and :class:`FrameDemos` indexes the frames of whole rendered episodes. Both hand out uint8 stacks
as numpy arrays; the learner encodes them.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from mbirl.errors import InputError

__all__ = ["FrameDemos", "FrameReplayBuffer", "PixelBatch"]

Frames = tuple[np.ndarray, ...]


class PixelBatch:
    """``B`` pixel transitions: ``obs`` and ``next_obs`` ``(B, 3 k, H, W)`` uint8, ``act`` ``(B, act_dim)`` float32,
    ``done`` ``(B,)`` float32 (1 for terminal transitions)."""

    def __init__(self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, done: np.ndarray) -> None:
        if obs.dtype != np.uint8 or obs.ndim != 4 or next_obs.shape != obs.shape:
            raise InputError(f"expected uint8 stacks (B, C, H, W) for obs and next_obs, got {obs.dtype} "
                             f"{obs.shape} / {next_obs.shape}", field="transitions.obs")
        if not len(act) == len(done) == len(obs):
            raise InputError(f"transition arrays of different lengths ({len(obs)}, {len(act)}, {len(done)})",
                             field="transitions")
        self.obs, self.act, self.next_obs, self.done = obs, act, next_obs, done

    def __len__(self) -> int:
        return len(self.obs)


class FrameReplayBuffer:
    """A ring buffer of pixel transitions ``(obs, act, next_obs, done)`` whose stacks share their frames.

    A transition holds references to the ``k`` frames of its observation and of its next observation. On
    :meth:`add`, an observation that continues a recent transition's next observation (the same frames: the next
    step of the same episode) reuses its frames, and a next observation that is the observation shifted by one
    frame stores only its newest frame; anything else is stored frame by frame. A frame is freed when the last
    transition holding it is overwritten, so memory is one frame per transition plus one per episode start. What
    :meth:`batch` returns does not depend on how frames were shared.

    Args:
        capacity: the most transitions held (the oldest are overwritten).
        frame_stack: frames per observation ``k``.
        frame_shape: one frame's ``(3, H, W)``.
        act_dim: width of the actions.
        streams: how many recent next observations an added observation is compared with (the number of
            environments stepping in turn).
    """

    def __init__(self, capacity: int, *, frame_stack: int, frame_shape: tuple[int, int, int], act_dim: int,
                 streams: int = 8) -> None:
        if capacity < 1:
            raise InputError(f"must be >= 1, got {capacity}", field="replay_size")
        self.capacity, self.frame_stack, self.frame_shape = capacity, frame_stack, tuple(frame_shape)
        self.obs_frames: list[Frames | None] = [None] * capacity
        self.next_frames: list[Frames | None] = [None] * capacity
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.ptr = 0
        self.size = 0
        self._recent: deque[Frames] = deque(maxlen=max(1, streams))

    def __len__(self) -> int:
        return self.size

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        c, h, w = self.frame_shape
        return (c * self.frame_stack, h, w)

    def _split(self, stack: np.ndarray) -> list[np.ndarray]:
        c = self.frame_shape[0]
        return [stack[i * c:(i + 1) * c] for i in range(self.frame_stack)]

    @staticmethod
    def _same(held: Frames, frames: list[np.ndarray]) -> bool:
        return all(np.array_equal(a, b) for a, b in zip(held, frames, strict=True))

    def _store(self, frames: list[np.ndarray]) -> Frames:
        out: list[np.ndarray] = []
        for f in frames:  # a reset's stack repeats its first frame: hold it once
            out.append(out[-1] if out and np.array_equal(out[-1], f) else np.array(f, np.uint8, copy=True))
        for f in out:
            f.flags.writeable = False
        return tuple(out)

    def add(self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, done: np.ndarray) -> None:
        """Append ``N`` transitions (``obs``, ``next_obs`` ``(N, 3 k, H, W)`` uint8, ``act`` ``(N, act_dim)``,
        ``done`` ``(N,)``), overwriting the oldest."""
        n = len(obs)
        if not len(act) == len(next_obs) == len(done) == n:
            raise InputError(f"transition arrays of different lengths ({n}, {len(act)}, {len(next_obs)}, "
                             f"{len(done)})", field="transitions")
        if n and (tuple(obs.shape[1:]) != self.obs_shape or tuple(next_obs.shape[1:]) != self.obs_shape):
            raise InputError(f"expected stacks of shape {self.obs_shape}, got {tuple(obs.shape[1:])} / "
                             f"{tuple(next_obs.shape[1:])}", field="transitions.obs")
        for i in range(n):
            frames = self._split(obs[i])
            held = next((r for r in self._recent if self._same(r, frames)), None)
            obs_refs = held if held is not None else self._store(frames)
            nxt = self._split(next_obs[i])
            if self._same(obs_refs[1:], nxt[:-1]):
                next_refs = obs_refs[1:] + self._store(nxt[-1:])
            else:
                next_refs = self._store(nxt)
            if held is not None:
                self._recent.remove(held)
            self._recent.append(next_refs)
            self.obs_frames[self.ptr], self.next_frames[self.ptr] = obs_refs, next_refs
            self.act[self.ptr], self.done[self.ptr] = act[i], done[i]
            self.ptr = (self.ptr + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def recent_indices(self, n: int) -> np.ndarray:
        """Indices of the ``n`` most recent transitions, newest first."""
        n = min(n, self.size)
        return (self.ptr - 1 - np.arange(n)) % self.capacity

    def _stacks(self, refs: list[Frames | None], idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *self.obs_shape), np.uint8)
        for row, i in enumerate(idx):
            held = refs[int(i)]
            assert held is not None, "index of an empty slot"
            np.concatenate(held, out=out[row])
        return out

    def observations(self, idx: np.ndarray) -> np.ndarray:
        """The observations ``(B, 3 k, H, W)`` uint8 of the transitions at ``idx``."""
        return self._stacks(self.obs_frames, idx)

    def batch(self, idx: np.ndarray) -> PixelBatch:
        """The transitions at indices ``idx``."""
        idx = np.asarray(idx)
        return PixelBatch(self._stacks(self.obs_frames, idx), self.act[idx], self._stacks(self.next_frames, idx),
                          self.done[idx])

    def held_frames(self) -> int:
        """How many distinct frames the buffer holds (its memory is about this times a frame's bytes)."""
        return len({id(f) for refs in (self.obs_frames, self.next_frames) for held in refs if held for f in held})

    def state_dict(self) -> dict[str, Any]:
        """Every distinct frame once (``frames``) and each transition's frame indices, oldest transition first."""
        order = self.recent_indices(self.size)[::-1]
        index: dict[int, int] = {}
        frames: list[np.ndarray] = []

        def ids(held: Frames | None) -> list[int]:
            assert held is not None
            out = []
            for f in held:
                if id(f) not in index:
                    index[id(f)] = len(frames)
                    frames.append(f)
                out.append(index[id(f)])
            return out

        obs_idx = [ids(self.obs_frames[int(i)]) for i in order]
        next_idx = [ids(self.next_frames[int(i)]) for i in order]
        k = self.frame_stack
        return {"frames": torch.from_numpy(np.stack(frames) if frames else np.zeros((0, *self.frame_shape), np.uint8)),
                "obs_idx": torch.as_tensor(np.asarray(obs_idx, np.int64).reshape(-1, k)),
                "next_idx": torch.as_tensor(np.asarray(next_idx, np.int64).reshape(-1, k)),
                "act": torch.from_numpy(self.act[order].copy()), "done": torch.from_numpy(self.done[order].copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        frames = state["frames"].numpy()
        obs_idx, next_idx = state["obs_idx"].numpy(), state["next_idx"].numpy()
        act, done = state["act"].numpy(), state["done"].numpy()
        n, k = len(act), self.frame_stack
        if (frames.dtype != np.uint8 or tuple(frames.shape[1:]) != self.frame_shape or obs_idx.shape != (n, k)
                or next_idx.shape != (n, k) or len(done) != n or act.shape[1:] != self.act.shape[1:]):
            raise InputError("the checkpoint's pixel replay buffer does not fit this run's frames and actions",
                             field="buffer")
        if n and (min(obs_idx.min(), next_idx.min()) < 0 or max(obs_idx.max(), next_idx.max()) >= len(frames)):
            raise InputError("the checkpoint's pixel replay buffer indexes frames it does not hold", field="buffer")
        held = []
        for f in frames:
            f = f.copy()
            f.flags.writeable = False
            held.append(f)
        self.obs_frames = [None] * self.capacity
        self.next_frames = [None] * self.capacity
        self.ptr = self.size = 0
        self._recent.clear()
        start = max(0, n - self.capacity)
        for i in range(start, n):
            self.obs_frames[self.ptr] = tuple(held[j] for j in obs_idx[i])
            self.next_frames[self.ptr] = tuple(held[j] for j in next_idx[i])
            self.act[self.ptr], self.done[self.ptr] = act[i], done[i]
            self.ptr = (self.ptr + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)


class FrameDemos:
    """Rendered demonstrations: the frames of every episode once, and each transition's stacks as frame indices.

    Args:
        frames: ``(F, 3, H, W)`` uint8, every episode's frames one after the other.
        obs_idx, next_idx: ``(N, k)`` indices into ``frames`` of transition ``i``'s observation and next
            observation (in the order of :class:`~mbirl.experts.demos.DemoStats`' transitions).
    """

    def __init__(self, frames: np.ndarray, obs_idx: np.ndarray, next_idx: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or obs_idx.shape != next_idx.shape or obs_idx.ndim != 2:
            raise InputError("expected uint8 frames (F, C, H, W) and index arrays (N, k) of one shape",
                             field="frames")
        if obs_idx.size and (min(obs_idx.min(), next_idx.min()) < 0 or
                             max(obs_idx.max(), next_idx.max()) >= len(frames)):
            raise InputError("frame indices out of range", field="frames")
        self.frames, self.obs_idx, self.next_idx = frames, obs_idx, next_idx

    @classmethod
    def from_episodes(cls, episode_frames: list[np.ndarray], frame_stack: int) -> FrameDemos:
        """From each episode's frames ``(T_e + 1, 3, H, W)`` (its ``T_e`` transitions): observation ``t`` stacks
        frames ``t - k + 1 .. t`` clipped at the episode's first, as :class:`~mbirl.envs.pixels.PixelObservation`
        does after a reset."""
        from mbirl.envs.pixels import stack_indices

        obs_idx, next_idx, offset = [], [], 0
        for frames in episode_frames:
            rows = stack_indices(len(frames), frame_stack) + offset
            obs_idx.append(rows[:-1])
            next_idx.append(rows[1:])
            offset += len(frames)
        return cls(np.concatenate(episode_frames), np.concatenate(obs_idx), np.concatenate(next_idx))

    @classmethod
    def render(cls, env_id: str, episodes: list[np.ndarray], frame_stack: int, *, source: str | None = None
               ) -> FrameDemos:
        """Demonstrations of ``env_id`` drawn from each episode's states ``(T_e + 1, state_dim)`` (the state
        observations a demo file stores) by :data:`mbirl.envs.pixels.PIXEL_RENDERERS`, exactly as the agent's
        observations are drawn; an InputError names an episode whose states cannot be set. Deterministic."""
        from mbirl.envs.pixels import PIXEL_RENDERERS, check_pixel_env, render_trajectory

        check_pixel_env(env_id)
        renderer = PIXEL_RENDERERS.make(env_id)
        try:
            frames = []
            for e, states in enumerate(episodes):
                where = f"{source or env_id} episode {e}"
                frames.append(render_trajectory(renderer, states, source=where))
        finally:
            renderer.close()
        return cls.from_episodes(frames, frame_stack)

    def __len__(self) -> int:
        return len(self.obs_idx)

    def observations(self, idx: np.ndarray) -> np.ndarray:
        """Observations ``(B, 3 k, H, W)`` of the transitions at ``idx``."""
        return self._stacks(self.obs_idx[idx])

    def next_observations(self, idx: np.ndarray) -> np.ndarray:
        """Next observations ``(B, 3 k, H, W)`` of the transitions at ``idx``."""
        return self._stacks(self.next_idx[idx])

    def _stacks(self, rows: np.ndarray) -> np.ndarray:
        b, k = rows.shape
        return self.frames[rows.reshape(-1)].reshape(b, k * self.frames.shape[1], *self.frames.shape[2:])
