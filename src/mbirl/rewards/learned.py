"""A trained run's learned reward as a frozen, self-contained component: evaluate it on batches, save and load it
(safetensors + JSON, never a pickle), and wrap any gymnasium environment so that its reward is the learned one.

Which reward (``term``), in the notation of docs/design.md ("MAIRL"):

* ``g``: AIRL's reward term ``g(s)`` (``state_only``) or ``g(s, a)`` -- **unshaped**; the reward meant to transfer
  to changed dynamics (the default for every AIRL discriminator);
* ``f``: AIRL's **shaped** ``f(s, a, s') = g(s, a) + gamma (1 - done) h(s') - h(s)``: what MAIRL's policy
  maximised (without the entropy term); same optimal policy as ``g`` under the training dynamics only;
* ``log_d``: GAIL's ``log D(s, a)`` (MGAIL's policy reward; the default for ``mgail``);
* ``neg_log_1md``: GAIL's ``-log(1 - D(s, a))`` (the PPO-GAIL generator's reward; the default for ``gail``);
* ``logit``: the discriminator's logit without the policy term, ``log D - log(1 - D)`` (DAC's reward; its default).

``done`` is 1.0 where ``s'`` is a true terminal state (not a time-limit truncation); only ``f`` uses it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from mbirl.errors import InputError
from mbirl.fileio import write_bytes_atomic, write_json_atomic
from mbirl.rewards.discriminator import DISCRIMINATORS, AIRLDiscriminator, Discriminator
from mbirl.validation import check_file

__all__ = ["FORMAT", "TERMS", "LearnedReward", "LearnedRewardWrapper"]

FORMAT = "mbirl.learned_reward/v1"

TERMS = {
    "g": "AIRL reward term g(s) or g(s, a): unshaped, the one that transfers",
    "f": "AIRL shaped reward f(s, a, s') = g + gamma (1 - done) h(s') - h(s)",
    "log_d": "GAIL log D(s, a)",
    "neg_log_1md": "GAIL -log(1 - D(s, a))",
    "logit": "discriminator logit log D - log(1 - D) (DAC)",
}
"""The reward terms a :class:`LearnedReward` can evaluate, with what each is."""

_AIRL_TERMS = ("g", "f", "logit")
_GAIL_TERMS = ("log_d", "neg_log_1md", "logit")
_ACTION_ENCODINGS = ("onehot", "clip", "raw", "unit")


@dataclass(frozen=True)
class _Spec:
    """How a discriminator was built and how environment data reach it (the JSON half of the file)."""

    discriminator: str
    """``airl`` or ``gail`` (:data:`mbirl.rewards.DISCRIMINATORS`)"""
    kwargs: dict[str, Any]
    """its constructor's keyword arguments (``obs_dim``, ``act_dim``, ``hidden``, ...)"""
    action: str
    """how environment actions are encoded: ``onehot`` (Discrete), ``clip`` (to the box), ``raw`` or ``unit``
    (scaled from the box to [-1, 1] and clipped: DAC's SAC actions)"""
    low: list[float] | None = None
    high: list[float] | None = None
    obs_standardize: bool = False
    """observations are standardised with stored statistics before the discriminator (DAC)"""
    absorbing: bool = False
    """observations get DAC's absorbing-state indicator; a terminal ``s'`` is the absorbing state"""
    env_id: str = ""
    source: dict[str, Any] = field(default_factory=dict)


class LearnedReward:
    """A frozen learned reward ``r(s, a, s', done)`` over raw environment observations and actions.

    Build one from a run directory (:meth:`load`), from a trained discriminator (:meth:`from_discriminator`) or
    from a saved file (:meth:`load` of a ``.json`` path). Call it on batches: ``reward(obs, act, next_obs, done)``
    with ``obs``/``next_obs`` ``(B, obs_dim)``, ``act`` ``(B, ...)`` environment actions (integers for Discrete
    spaces) and ``done`` ``(B,)`` returns ``(B,)`` float64. :meth:`wrap` gives a gymnasium environment whose reward
    is this one.

    Args:
        disc: the discriminator (its weights are frozen here).
        spec: how it was built and how environment data reach it.
        term: which reward (:data:`TERMS`); None picks the default of its discriminator (``g`` for AIRL, ``log_d``
            for GAIL).
        obs_mean, obs_std: DAC's observation statistics (when ``spec.obs_standardize``).
    """

    def __init__(self, disc: Discriminator, spec: _Spec, *, term: str | None = None,
                 obs_mean: torch.Tensor | None = None, obs_std: torch.Tensor | None = None) -> None:
        allowed = _AIRL_TERMS if isinstance(disc, AIRLDiscriminator) else _GAIL_TERMS
        term = term if term is not None else spec.source.get("default_term", allowed[0])
        if term not in allowed:
            raise InputError(f"unknown reward term '{term}' for the {spec.discriminator} discriminator (expected "
                             f"one of {', '.join(allowed)})", field="term")
        if spec.action not in _ACTION_ENCODINGS:
            raise InputError(f"unknown action encoding '{spec.action}'", field="action")
        if spec.obs_standardize and (obs_mean is None or obs_std is None):
            raise InputError("observation statistics are missing", field="obs_mean")
        self.disc = disc.eval().requires_grad_(False)
        self.spec, self.term = spec, term
        self.obs_mean, self.obs_std = obs_mean, obs_std

    # ----- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_discriminator(cls, disc: Discriminator, *, action: str, low: np.ndarray | None = None,
                           high: np.ndarray | None = None, env_id: str = "", term: str | None = None,
                           default_term: str | None = None, obs_mean: np.ndarray | None = None,
                           obs_std: np.ndarray | None = None, absorbing: bool = False,
                           source: dict[str, Any] | None = None) -> LearnedReward:
        """A frozen copy of a trained discriminator's reward (``action``: the encoding its training used)."""
        if isinstance(disc, AIRLDiscriminator):
            kwargs: dict[str, Any] = {
                "obs_dim": disc.obs_dim, "act_dim": disc.act_dim, "gamma": disc.gamma, "state_only": disc.state_only,
                "hidden": [m.out_features for m in disc.h_net if isinstance(m, torch.nn.Linear)][:-1],
                "reward_hidden": [m.out_features for m in disc.g_net if isinstance(m, torch.nn.Linear)][:-1]}
            name = "airl"
        else:
            net = getattr(disc, "net", None)
            if net is None:
                raise InputError(f"cannot save a {type(disc).__name__} (not an AIRL or GAIL discriminator)",
                                 field="discriminator")
            kwargs = {"obs_dim": disc.obs_dim, "act_dim": disc.act_dim,
                      "hidden": [m.out_features for m in net if isinstance(m, torch.nn.Linear)][:-1]}
            name = "gail"
        src = dict(source or {})
        if default_term is not None:
            src["default_term"] = default_term
        spec = _Spec(name, kwargs, action, None if low is None else np.asarray(low, np.float64).tolist(),
                     None if high is None else np.asarray(high, np.float64).tolist(),
                     obs_mean is not None, absorbing, env_id, src)
        frozen = DISCRIMINATORS.make(name, **kwargs)
        frozen.load_state_dict(disc.state_dict())
        return cls(frozen, spec, term=term,
                   obs_mean=None if obs_mean is None else torch.as_tensor(obs_mean, dtype=torch.float32),
                   obs_std=None if obs_std is None else torch.as_tensor(obs_std, dtype=torch.float32))

    @classmethod
    def load(cls, path: str | Path, *, term: str | None = None) -> LearnedReward:
        """Load a reward: ``path`` is a file saved by :meth:`save` (``.json``) or a run directory (``mbirl il
        train`` / ``mbirl mairl train`` of an algorithm with a discriminator: mairl, mgail, gail, airl, dac)."""
        path = Path(path)
        if path.is_dir():
            from mbirl.api import load_run

            run = load_run(path)
            reward = getattr(run, "reward", None)
            if not isinstance(reward, LearnedReward):
                raise InputError(f"run of '{getattr(run, 'algo', 'mbirl')}' has no learned reward "
                                 "(behaviour cloning and MBIRL runs have none)", source=str(path))
            return reward if term is None else reward.with_term(term)
        return cls._load_file(path, term=term)

    @classmethod
    def _load_file(cls, path: Path, *, term: str | None) -> LearnedReward:
        from safetensors.torch import load

        json_path = check_file(path, what="learned reward file", max_bytes=16 * 1024**2)
        try:
            meta = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"invalid JSON ({type(exc).__name__})", source=str(json_path)) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise InputError(f"not a learned reward file (expected format '{FORMAT}')", source=str(json_path),
                             field="format")
        try:
            spec = _Spec(**meta["spec"])
            tensor_path = check_file(json_path.with_suffix(".safetensors"), what="learned reward tensors")
            tensors = load(tensor_path.read_bytes())
            disc = DISCRIMINATORS.make(spec.discriminator, **spec.kwargs)
            disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        except InputError:
            raise
        except Exception as exc:  # a wrong key, shape or tensor file: one line, never a traceback
            raise InputError(f"inconsistent learned reward ({type(exc).__name__}: {exc})".splitlines()[0],
                             source=str(json_path)) from None
        return cls(disc, spec, term=term if term is not None else meta.get("term"),
                   obs_mean=tensors.get("obs_mean"), obs_std=tensors.get("obs_std"))

    def save(self, path: str | Path) -> Path:
        """Save as ``path`` (``.json``: the spec and term) + ``path`` with suffix ``.safetensors`` (weights)."""
        from safetensors.torch import save

        path = Path(path)
        if path.suffix != ".json":
            raise InputError(f"must end in .json, got '{path}'", field="path")
        tensors = {f"disc.{k}": v.detach().contiguous() for k, v in self.disc.state_dict().items()}
        if self.obs_mean is not None and self.obs_std is not None:
            tensors["obs_mean"], tensors["obs_std"] = self.obs_mean.contiguous(), self.obs_std.contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path.with_suffix(".safetensors"), save(tensors))
        write_json_atomic(path, {"format": FORMAT, "term": self.term, "spec": self.spec.__dict__})
        return path

    def with_term(self, term: str) -> LearnedReward:
        """The same discriminator, another reward term (:data:`TERMS`)."""
        return LearnedReward(self.disc, self.spec, term=term, obs_mean=self.obs_mean, obs_std=self.obs_std)

    # ----- evaluation -------------------------------------------------------------------------------------------
    @property
    def state_only(self) -> bool:
        """Whether the reward ignores the action (AIRL ``g(s)``)."""
        return bool(self.spec.kwargs.get("state_only", False)) and self.term == "g"

    @property
    def shaped(self) -> bool:
        """Whether the reward includes AIRL's potential shaping (``f``)."""
        return self.term == "f"

    def encode_actions(self, act: np.ndarray) -> torch.Tensor:
        """Environment actions ``(B, ...)`` as the discriminator's ``(B, act_dim)`` float32 input."""
        act = np.asarray(act)
        n, dim = len(act), int(self.spec.kwargs["act_dim"])
        if self.spec.action == "onehot":
            idx = act.reshape(n).astype(np.int64)
            if n and (idx.min() < 0 or idx.max() >= dim):
                raise InputError(f"discrete actions must be in 0..{dim - 1}", field="act")
            return F.one_hot(torch.as_tensor(idx), dim).float()
        a = act.reshape(n, -1).astype(np.float32)
        if a.shape[1] != dim:
            raise InputError(f"actions have size {a.shape[1]}, the reward expects {dim}", field="act")
        low, high = np.asarray(self.spec.low, np.float32), np.asarray(self.spec.high, np.float32)
        if self.spec.action == "clip":
            a = np.clip(a, low, high)
        elif self.spec.action == "unit":
            a = np.clip(2.0 * (a - low) / (high - low) - 1.0, -1.0, 1.0)
        return torch.as_tensor(a, dtype=torch.float32)

    def _obs(self, obs: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(obs, np.float32).reshape(len(obs), -1))
        if self.obs_mean is not None and self.obs_std is not None:
            x = (x - self.obs_mean) / self.obs_std
        if self.spec.absorbing:
            x = torch.cat([x, torch.zeros(len(x), 1)], -1)
        return x

    def __call__(self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, done: np.ndarray | None = None
                 ) -> np.ndarray:
        """The reward of ``B`` transitions, ``(B,)`` float64 (see the class docstring for the shapes)."""
        n = len(obs)
        if len(act) != n or len(next_obs) != n:
            raise InputError(f"obs, act and next_obs need the same length, got {n}, {len(act)}, {len(next_obs)}",
                             field="obs")
        d = torch.zeros(n) if done is None else torch.as_tensor(np.asarray(done, np.float32).reshape(n))
        s, a, s2 = self._obs(obs), self.encode_actions(act), self._obs(next_obs)
        want = int(self.spec.kwargs["obs_dim"])
        if s.shape[1] != want:
            raise InputError(f"observations have size {s.shape[1] - self.spec.absorbing}, the reward expects "
                             f"{want - self.spec.absorbing}", field="obs")
        if self.spec.absorbing:  # DAC: a terminal s' is the absorbing state, and the value bootstraps through it
            absorbing = torch.zeros(want)
            absorbing[-1] = 1.0
            s2 = torch.where(d[:, None] > 0, absorbing, s2)
            d = torch.zeros_like(d)
        with torch.no_grad():
            disc = self.disc
            if self.term == "g":
                assert isinstance(disc, AIRLDiscriminator)
                r = disc.g(s, a)
            elif self.term == "f":
                assert isinstance(disc, AIRLDiscriminator)
                r = disc.f(s, a, s2, d)
            else:
                logit = disc.logits(s, a, s2, d, torch.zeros_like(d))
                r = {"logit": logit, "log_d": F.logsigmoid(logit), "neg_log_1md": F.softplus(logit)}[self.term]
        return r.double().numpy()

    def wrap(self, env: gym.Env) -> LearnedRewardWrapper:
        """``env`` with this reward in place of its own (kept in ``info["true_reward"]``)."""
        return LearnedRewardWrapper(env, self)

    def __repr__(self) -> str:
        return (f"LearnedReward({self.spec.discriminator}, term={self.term!r}: {TERMS[self.term]}, "
                f"env={self.spec.env_id!r})")


class LearnedRewardWrapper(gym.Wrapper):
    """A gymnasium environment whose reward is a learned one: each step returns ``reward_fn(s, a, s', terminated)``
    and keeps the environment's own reward in ``info["true_reward"]`` (so any Stable-Baselines3 algorithm trains
    on the learned reward unchanged, and its true return can still be measured)."""

    def __init__(self, env: gym.Env, reward_fn: LearnedReward | Callable[..., np.ndarray]) -> None:
        super().__init__(env)
        self.reward_fn = reward_fn
        self._obs: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = np.asarray(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        reward = float(self.reward_fn(self._obs[None], np.asarray(action)[None], np.asarray(obs)[None],
                                      np.asarray([float(terminated)]))[0])
        self._obs = np.asarray(obs)
        info = dict(info)
        info["true_reward"] = float(true_reward)
        return obs, reward, terminated, truncated, info
