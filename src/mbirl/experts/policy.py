"""Expert policies exported from Stable-Baselines3 into plain torch MLPs stored as safetensors + JSON.

Demonstrations are generated from these exported policies, so our own code never unpickles an SB3 ``.zip``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mbirl.errors import InputError
from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["ExpertPolicy", "OutputMode", "export_sb3_policy"]

OutputMode = Literal["tanh_box", "clip_box", "argmax"]
"""How the last layer becomes an action: SAC's squashed Gaussian mean rescaled to the box, PPO's Gaussian mean
clipped to the box, or the arg-max of PPO/DQN logits for a discrete action space."""

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class ExpertPolicy(nn.Module):
    """A deterministic MLP policy ``obs -> action``.

    Args:
        sizes: layer widths ``[obs_dim, hidden..., out_dim]``.
        activation: ``relu`` or ``tanh`` between hidden layers.
        mode: see :data:`OutputMode`.
        low, high: the action box (continuous modes), shape ``(act_dim,)``.
        obs_norm: optional observation normalisation baked in from SB3's ``VecNormalize``:
            ``{"mean": [...], "var": [...], "clip": c, "eps": e}``; the network then sees
            ``clip((obs - mean) / sqrt(var + eps), -c, c)`` exactly as during training.
    """

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_low: torch.Tensor
    act_high: torch.Tensor

    def __init__(self, sizes: list[int], activation: str, mode: OutputMode, low: list[float] | None = None,
                 high: list[float] | None = None, obs_norm: dict[str, Any] | None = None) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise InputError(f"unknown activation '{activation}'", field="activation")
        if mode not in ("tanh_box", "clip_box", "argmax"):
            raise InputError(f"unknown output mode '{mode}'", field="mode")
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.sizes, self.activation, self.mode = list(sizes), activation, mode
        self.low = None if low is None else list(map(float, low))
        self.high = None if high is None else list(map(float, high))
        self.obs_norm: dict[str, Any] | None = None
        if obs_norm is not None:
            try:
                mean = [float(v) for v in obs_norm["mean"]]
                var = [float(v) for v in obs_norm["var"]]
                clip, eps = float(obs_norm["clip"]), float(obs_norm["eps"])
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"malformed observation normalisation ({exc})", field="obs_norm") from None
            if len(mean) != sizes[0] or len(var) != sizes[0] or min(var) < 0 or clip <= 0 or eps < 0:
                raise InputError(f"observation normalisation does not fit obs_dim {sizes[0]}", field="obs_norm")
            self.obs_norm = {"mean": mean, "var": var, "clip": clip, "eps": eps}
            # tensors built once (not saved: the JSON config above is the stored form)
            self.register_buffer("obs_mean", torch.tensor(mean), persistent=False)
            self.register_buffer("obs_std", (torch.tensor(var) + eps).sqrt(), persistent=False)
        if mode != "argmax":
            if self.low is None or self.high is None:
                raise InputError(f"output mode '{mode}' needs the action box (low, high)", field="mode")
            self.register_buffer("act_low", torch.tensor(self.low), persistent=False)
            self.register_buffer("act_high", torch.tensor(self.high), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.obs_norm is not None:
            clip = self.obs_norm["clip"]
            obs = ((obs - self.obs_mean) / self.obs_std).clamp(-clip, clip)
        out = self.net(obs)
        if self.mode == "argmax":
            return out.argmax(-1)
        low, high = self.act_low, self.act_high
        if self.mode == "tanh_box":
            return low + 0.5 * (torch.tanh(out) + 1.0) * (high - low)
        return torch.maximum(torch.minimum(out, high), low)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray | int:
        """Action for one observation, as the environment expects it."""
        out = self.forward(torch.as_tensor(np.asarray(obs, dtype=np.float32))[None])[0]
        return int(out) if self.mode == "argmax" else out.numpy().astype(np.float32)

    def config(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "activation": self.activation, "mode": self.mode, "low": self.low,
                "high": self.high, "obs_norm": self.obs_norm}

    def save(self, stem: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``stem.safetensors`` + ``stem.json`` (architecture, weights and ``extra`` metadata)."""
        save_checkpoint(stem, {"config": self.config(), "state_dict": dict(self.state_dict()),
                               "extra": dict(extra or {})})

    @classmethod
    def load(cls, stem: str | Path) -> tuple[ExpertPolicy, dict[str, Any]]:
        """Load an exported policy; returns ``(policy, extra metadata)``. InputError if malformed."""
        state = load_checkpoint(stem)
        try:
            cfg = state["config"]
            sizes = cfg["sizes"]
            if not (isinstance(sizes, list) and 2 <= len(sizes) <= 32
                    and all(isinstance(s, int) and 1 <= s <= 65536 for s in sizes)):
                raise ValueError(f"layer sizes must be 2 to 32 integers in [1, 65536], got {str(sizes)[:80]}")
            policy = cls(list(cfg["sizes"]), cfg["activation"], cfg["mode"], cfg.get("low"), cfg.get("high"),
                         cfg.get("obs_norm"))
            policy.load_state_dict(state["state_dict"])
            extra = state.get("extra", {})
            if not isinstance(extra, dict):
                raise TypeError(f"'extra' is a {type(extra).__name__}, not a mapping")
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            raise InputError(f"not an exported expert policy ({type(exc).__name__}: {exc})", source=str(stem)
                             ) from None
        policy.eval()
        return policy, dict(extra)


def _linear_layers(seq: nn.Module) -> tuple[list[nn.Linear], str]:
    linears = [m for m in seq.modules() if isinstance(m, nn.Linear)]
    acts = {type(m).__name__.lower() for m in seq.modules() if isinstance(m, (nn.ReLU, nn.Tanh))}
    if len(acts) > 1:
        raise InputError(f"mixed activations {acts} are not supported", field="policy")
    return linears, (acts.pop() if acts else "relu")


def export_sb3_policy(model: Any, obs_rms: Any = None, clip_obs: float = 10.0, epsilon: float = 1e-8) -> ExpertPolicy:
    """Copy the deterministic action path of an SB3 SAC/TQC, TD3 or PPO (Box or Discrete) model into an ExpertPolicy.

    ``obs_rms`` (a ``VecNormalize.obs_rms`` with ``mean``/``var``) and its ``clip_obs``/``epsilon`` bake the
    training-time observation normalisation into the exported policy."""
    import gymnasium as gym

    policy = model.policy
    space = model.action_space
    if hasattr(policy, "actor") and hasattr(policy.actor, "latent_pi"):  # SAC / TQC
        hidden, activation = _linear_layers(policy.actor.latent_pi)
        head, mode = policy.actor.mu, "tanh_box"
    elif hasattr(policy, "actor") and isinstance(getattr(policy.actor, "mu", None), nn.Sequential):  # TD3 / DDPG
        if not isinstance(policy.actor.mu[-1], nn.Tanh):
            raise InputError("expected a tanh-squashed deterministic actor", field="policy")
        linears, activation = _linear_layers(policy.actor.mu[:-1])  # hidden layers and output layer
        hidden, head, mode = linears[:-1], linears[-1], "tanh_box"
    elif hasattr(policy, "mlp_extractor") and hasattr(policy, "action_net"):  # PPO / A2C
        hidden, activation = _linear_layers(policy.mlp_extractor.policy_net)
        head = policy.action_net
        mode = "argmax" if isinstance(space, gym.spaces.Discrete) else "clip_box"
    else:
        raise InputError(f"cannot export a policy of type {type(policy).__name__}", field="policy")
    layers = [*hidden, head]
    sizes = [layers[0].in_features] + [layer.out_features for layer in layers]
    low = high = None
    if mode != "argmax":
        low, high = np.asarray(space.low).tolist(), np.asarray(space.high).tolist()
    obs_norm = None
    if obs_rms is not None:
        obs_norm = {"mean": np.asarray(obs_rms.mean).tolist(), "var": np.asarray(obs_rms.var).tolist(),
                    "clip": float(clip_obs), "eps": float(epsilon)}
    out = ExpertPolicy(sizes, activation, mode, low, high, obs_norm)  # type: ignore[arg-type]
    targets = [m for m in out.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for dst, src in zip(targets, layers, strict=True):
            dst.weight.copy_(src.weight.detach().cpu())
            dst.bias.copy_(src.bias.detach().cpu())
    out.eval()
    return out
