"""The complete training state of a Stable-Baselines3 model as tensors + JSON values (never SB3's pickled zip), so
expert training resumes exactly: networks and optimisers, the replay buffer's filled part, SB3's counters, the last
observations, the training environments' own state (physics, episode step counters, RNGs), the action space's RNG,
observation/return normalisation and the global Python/numpy/torch RNGs.

Environment state is captured for the environments experts are trained on: classic control (``state`` plus the
fields their ``step`` reads) and MuJoCo (``qpos``, ``qvel``, ``act``, time). Training is checkpointed between
rollouts (SB3's ``on_rollout_start``), where PPO's rollout buffer is empty and off-policy models have trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mbirl.errors import InputError
from mbirl.reporting.checkpoint import check_optimizer_state

__all__ = ["SB3StateCapture", "eval_checkpoint_callback", "load_sb3_state", "sb3_state"]

_CLASSIC_FIELDS = ("state", "last_u", "steps_beyond_terminated")
_WRAPPER_FLAGS = ("_has_reset", "checked_reset", "checked_step", "checked_data_reuse")


def _rng_state(gen: np.random.Generator) -> dict[str, Any]:
    state = gen.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise InputError(f"cannot checkpoint a {state.get('bit_generator')} generator", field="env")
    s = state["state"]
    return {"state": str(s["state"]), "inc": str(s["inc"]), "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"])}


def _set_rng_state(gen: np.random.Generator, saved: dict[str, Any]) -> None:
    gen.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
                               "has_uint32": int(saved["has_uint32"]), "uinteger": int(saved["uinteger"])}


def _wrappers(env: Any) -> list[Any]:
    chain = [env]
    while hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    return chain


def _env_state(env: Any) -> dict[str, Any]:
    """One gymnasium environment's state (its wrappers' step counters, its physics, its RNG)."""
    out: dict[str, Any] = {}
    for i, w in enumerate(_wrappers(env)):
        if hasattr(w, "_elapsed_steps"):
            out[f"elapsed_{i}"] = w._elapsed_steps
        for flag in _WRAPPER_FLAGS:  # gymnasium's order enforcing and passive checks
            if isinstance(getattr(w, flag, None), bool):
                out[f"{flag}_{i}"] = getattr(w, flag)
        if hasattr(w, "needs_reset") and hasattr(w, "rewards"):  # SB3's Monitor: the episode so far
            out[f"monitor_{i}"] = {"needs_reset": bool(w.needs_reset), "rewards": [float(r) for r in w.rewards]}
    raw = env.unwrapped
    out["np_random"] = _rng_state(raw.np_random)
    if hasattr(raw, "data") and hasattr(raw.data, "qpos"):  # MuJoCo
        d = raw.data
        out["mujoco"] = {"qpos": torch.as_tensor(d.qpos.copy()), "qvel": torch.as_tensor(d.qvel.copy()),
                         "act": torch.as_tensor(d.act.copy()), "time": float(d.time)}
    else:
        found = False
        for name in _CLASSIC_FIELDS:
            if hasattr(raw, name):
                value = getattr(raw, name)
                if isinstance(value, np.generic):
                    value = value.item()
                is_array = isinstance(value, (np.ndarray, list, tuple))
                out[f"attr_{name}"] = torch.as_tensor(np.asarray(value)) if is_array else value
                found = found or name == "state"
        if not found:
            raise InputError(f"cannot checkpoint the state of {type(raw).__name__} (classic control and MuJoCo "
                             "environments can be resumed)", field="env")
    return out


def _set_env_state(env: Any, saved: dict[str, Any]) -> None:
    for i, w in enumerate(_wrappers(env)):
        for flag in _WRAPPER_FLAGS:
            if f"{flag}_{i}" in saved:
                setattr(w, flag, bool(saved[f"{flag}_{i}"]))
        if f"elapsed_{i}" in saved:
            w._elapsed_steps = int(saved[f"elapsed_{i}"]) if saved[f"elapsed_{i}"] is not None else None
        if f"monitor_{i}" in saved:
            w.needs_reset = bool(saved[f"monitor_{i}"]["needs_reset"])
            w.rewards = [float(r) for r in saved[f"monitor_{i}"]["rewards"]]
    raw = env.unwrapped
    _set_rng_state(raw.np_random, saved["np_random"])
    if "mujoco" in saved:
        m = saved["mujoco"]
        raw.set_state(m["qpos"].numpy(), m["qvel"].numpy())
        raw.data.act[:] = m["act"].numpy()
        raw.data.time = float(m["time"])
    for name in _CLASSIC_FIELDS:
        if f"attr_{name}" in saved:
            value = saved[f"attr_{name}"]
            old = getattr(raw, name, None)
            if isinstance(value, torch.Tensor):
                arr = value.numpy().copy()
                value = arr if isinstance(old, np.ndarray) or old is None else type(old)(arr.tolist())
            setattr(raw, name, value)


def _vec_envs(model: Any) -> tuple[Any, Any]:
    """(the VecNormalize wrapper or None, the DummyVecEnv holding the environments)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    venv = model.get_env()
    norm = venv if isinstance(venv, VecNormalize) else None
    inner = venv.venv if norm is not None else venv
    if not isinstance(inner, DummyVecEnv):
        raise InputError(f"cannot checkpoint a {type(inner).__name__}", field="env")
    return norm, inner


def _arrays(obj: Any) -> Any:
    if obj is None:
        return None
    return torch.as_tensor(np.asarray(obj).copy())


def sb3_state(model: Any) -> dict[str, Any]:
    """Everything :func:`load_sb3_state` needs to continue ``model``'s training exactly."""
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    params = model.get_parameters()  # the policy's and every optimiser's state dict
    state: dict[str, Any] = {
        "params": params,
        "counters": {"num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
                     "episode_num": int(model._episode_num)},
        "last_obs": _arrays(model._last_obs),
        "last_original_obs": _arrays(model._last_original_obs),
        "last_episode_starts": _arrays(model._last_episode_starts),
        "action_space": _rng_state(model.action_space.np_random),
    }
    if hasattr(model, "log_ent_coef"):
        state["log_ent_coef"] = model.log_ent_coef.detach().clone()
    if isinstance(model, OffPolicyAlgorithm):
        buf: Any = model.replay_buffer
        n = buf.buffer_size if buf.full else buf.pos
        names = ["observations", "actions", "rewards", "dones", "timeouts"]
        if not buf.optimize_memory_usage:
            names.append("next_observations")
        state["replay"] = {"pos": int(buf.pos), "full": bool(buf.full),
                           **{k: torch.as_tensor(getattr(buf, k)[:n].copy()) for k in names}}
    norm, inner = _vec_envs(model)
    state["envs"] = [_env_state(e) for e in inner.envs]
    if norm is not None:
        state["normalize"] = {
            "obs": {"mean": _arrays(norm.obs_rms.mean), "var": _arrays(norm.obs_rms.var),
                    "count": float(norm.obs_rms.count)},
            "ret": {"mean": _arrays(norm.ret_rms.mean), "var": _arrays(norm.ret_rms.var),
                    "count": float(norm.ret_rms.count)},
            "returns": _arrays(norm.returns), "old_obs": _arrays(norm.old_obs), "old_reward": _arrays(norm.old_reward)}
    return state


def load_sb3_state(model: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`sb3_state` saved into a freshly built ``model`` of the same configuration (ValueError
    for a state that does not fit it: SB3 loads optimiser states as given, so each is checked first)."""
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
    from stable_baselines3.common.save_util import recursive_getattr

    params, expected = state["params"], set(model._get_torch_save_params()[0])
    if not isinstance(params, dict) or set(params) != expected:
        names = sorted(map(str, params))[:6] if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"saved networks and optimisers {names}, expected {sorted(expected)}")
    for name in sorted(expected):
        target = recursive_getattr(model, name)
        if isinstance(target, torch.optim.Optimizer):
            check_optimizer_state(target, params[name], name=name)  # the lr: SB3 sets it at every update
    model.set_parameters(params, exact_match=True, device="cpu")
    c = state["counters"]
    model.num_timesteps, model._n_updates, model._episode_num = (int(c["num_timesteps"]), int(c["n_updates"]),
                                                                  int(c["episode_num"]))
    model._last_obs = None if state["last_obs"] is None else state["last_obs"].numpy().copy()
    model._last_original_obs = (None if state["last_original_obs"] is None
                                else state["last_original_obs"].numpy().copy())
    model._last_episode_starts = state["last_episode_starts"].numpy().copy()
    _set_rng_state(model.action_space.np_random, state["action_space"])
    if "log_ent_coef" in state:
        with torch.no_grad():
            model.log_ent_coef.copy_(state["log_ent_coef"])
    if isinstance(model, OffPolicyAlgorithm):
        buf: Any = model.replay_buffer
        r = state["replay"]
        for key, value in r.items():
            if isinstance(value, torch.Tensor):
                target = getattr(buf, key)
                target[: len(value)] = value.numpy().reshape(len(value), *target.shape[1:])
        buf.pos, buf.full = int(r["pos"]), bool(r["full"])
    norm, inner = _vec_envs(model)
    if len(state["envs"]) != len(inner.envs):
        raise ValueError(f"{len(state['envs'])} saved environments, the model has {len(inner.envs)}")
    for env, saved in zip(inner.envs, state["envs"], strict=True):
        _set_env_state(env, saved)
    inner._seeds = [None] * len(inner.envs)  # the environments were seeded when training began
    if norm is not None:
        n = state["normalize"]
        for rms, saved in ((norm.obs_rms, n["obs"]), (norm.ret_rms, n["ret"])):
            rms.mean, rms.var, rms.count = saved["mean"].numpy(), saved["var"].numpy(), float(saved["count"])
        norm.returns = n["returns"].numpy()
        norm.old_obs, norm.old_reward = n["old_obs"].numpy(), n["old_reward"].numpy()


class SB3StateCapture:
    """``capture()``: :func:`sb3_state` of ``model``, or None when ``env_id``'s state cannot be captured
    (environments other than classic control and MuJoCo) — warned once, naming ``consequence``, and not tried
    again."""

    def __init__(self, model: Any, env_id: str, consequence: str) -> None:
        self.model, self.env_id, self.consequence = model, env_id, consequence
        self.possible = True

    def __call__(self) -> dict[str, Any] | None:
        import warnings

        if not self.possible:
            return None
        try:
            return sb3_state(self.model)
        except InputError as exc:
            if exc.field != "env":
                raise
            warnings.warn(f"the state of {self.env_id} cannot be captured (classic control and MuJoCo environments "
                          f"can): {self.consequence}", stacklevel=3)
            self.possible = False
            return None


def eval_checkpoint_callback(model: Any, every: int, evaluate: Callable[[int], None], save: Callable[[], None], *,
                             until: int | None = None, keep_going: Callable[[], bool] | None = None) -> Any:
    """An SB3 callback that calls ``evaluate(num_timesteps)`` every ``every`` environment steps (counted on from
    ``model``'s, so a resumed run keeps its schedule; only below ``until`` when given) and ``save()`` at the start of
    the next rollout — between SB3's rollouts and updates, where :func:`sb3_state` is complete. Training stops when
    ``keep_going()`` turns false."""
    from stable_baselines3.common.callbacks import BaseCallback

    class _EvalCheckpoint(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_eval = (int(model.num_timesteps) // every + 1) * every
            self.pending = False

        def _on_rollout_start(self) -> None:
            if self.pending:
                save()
                self.pending = False

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval and (until is None or self.num_timesteps < until):
                self.next_eval += every
                evaluate(self.num_timesteps)
                self.pending = True
            return keep_going is None or keep_going()

    return _EvalCheckpoint()
