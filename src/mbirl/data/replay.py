"""A ring buffer of transitions that hands out :class:`~mbirl.types.TransitionBatch` minibatches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mbirl.errors import InputError
from mbirl.types import TransitionBatch

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """A ring buffer of transitions ``(obs, act, next_obs, done)`` as float32 arrays; ``len()`` is the number held.

    Args:
        capacity: the most transitions held (the oldest are overwritten).
        obs_dim, act_dim: widths of observations and actions (one-hot width for discrete actions).
        device: where the minibatches of :meth:`batch` go (the transitions themselves are held in host memory).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, *, device: torch.device | str | None = None
                 ) -> None:
        if capacity < 1:
            raise InputError(f"must be >= 1, got {capacity}", field="replay_size")
        self.capacity = capacity
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.ptr = 0
        self.size = 0

    @classmethod
    def from_arrays(cls, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, done: np.ndarray, *,
                    device: torch.device | str | None = None) -> ReplayBuffer:
        """A buffer holding exactly these ``N`` transitions (capacity ``N``), in order."""
        buf = cls(len(obs), obs.shape[1], act.shape[1], device=device)
        buf.add(obs, act, next_obs, done)
        return buf

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, done: np.ndarray) -> None:
        """Append ``N`` transitions (rows of ``(N, dim)`` arrays and ``done`` ``(N,)``), overwriting the oldest."""
        n = len(obs)
        if not len(act) == len(next_obs) == len(done) == n:
            raise InputError(f"transition arrays of different lengths ({n}, {len(act)}, {len(next_obs)}, "
                             f"{len(done)})", field="transitions")
        start = max(0, n - self.capacity)  # rows that would be overwritten within this call are skipped
        pos = (self.ptr + np.arange(start, n)) % self.capacity
        self.obs[pos], self.act[pos] = obs[start:], act[start:]
        self.next_obs[pos], self.done[pos] = next_obs[start:], done[start:]
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def recent_indices(self, n: int) -> np.ndarray:
        """Indices of the ``n`` most recent transitions, newest first."""
        n = min(n, self.size)
        return (self.ptr - 1 - np.arange(n)) % self.capacity

    def batch(self, idx: np.ndarray) -> TransitionBatch:
        """The transitions at indices ``idx`` (``log_pi`` unset), on the buffer's ``device``."""
        return TransitionBatch(torch.from_numpy(self.obs[idx]), torch.from_numpy(self.act[idx]),
                               torch.from_numpy(self.next_obs[idx]), torch.from_numpy(self.done[idx])
                               ).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        order = self.recent_indices(self.size)[::-1].copy()  # oldest first
        return {"obs": torch.from_numpy(self.obs[order]), "act": torch.from_numpy(self.act[order]),
                "next_obs": torch.from_numpy(self.next_obs[order]), "done": torch.from_numpy(self.done[order])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ptr = self.size = 0
        self.add(state["obs"].numpy(), state["act"].numpy(), state["next_obs"].numpy(), state["done"].numpy())
