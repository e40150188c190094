"""Learned keypoint dynamics: an MLP (or an ensemble of MLPs) ``(q_t, z_t, u_t) -> (q_{t+1}, z_{t+1})``.

It implements :class:`~mbirl.dynamics.base.KeypointDynamics`, so the MBIRL learner, the gradient MPC and the
feature-matching baseline run on it unchanged. Details:

* Residual, normalised: the network sees standardised ``(q, z, u)`` and predicts standardised increments;
  ``q_{t+1} = q_t + u_t + dq`` (the commanded joint delta is a prior; the network learns the correction, e.g.
  at joint limits) and ``z_{t+1} = z_t + dz``.
* Smooth activations (SiLU): the bi-level gradient differentiates the inner gradient step, i.e. the model's
  Jacobian, so the model should have useful second derivatives (ReLU's are zero).
* Start keypoints: the interface rolls out from joints ``q0`` only, so the model has a readout head
  ``z = h(q)`` (trained on the same data) for the start state; :meth:`rollout` also accepts ``z0``.
* Ensemble: ``ensemble`` members with their own initialisation and minibatch order; predictions average the
  members (their spread is available from :meth:`step_members`).

Training (:func:`fit_keypoint_dynamics`) minimises the open-loop multi-step error over whole trajectories
(back-propagation through the rollout), which is what the inner loop uses, plus the one-step and readout errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mbirl.dynamics.base import KeypointDynamics
from mbirl.errors import InputError, check_finite
from mbirl.reporting.checkpoint import load_optimizer_state

__all__ = ["MODEL_FILE", "DynamicsTrainConfig", "KeypointMLPConfig", "KeypointMLPDynamics", "dynamics_errors",
           "fit_keypoint_dynamics", "keypoint_dynamics_optimizer"]

MODEL_FILE = "model"
"""Checkpoint stem of a trained model inside its run directory (:meth:`KeypointMLPDynamics.save`)."""


@dataclass(frozen=True)
class KeypointMLPConfig:
    """Size of :class:`KeypointMLPDynamics` (each ensemble member is an MLP of this shape)."""

    hidden: int = 256
    """hidden units per layer"""
    layers: int = 3
    """hidden layers per member"""
    ensemble: int = 1
    """ensemble members (their own initialisation; predictions average them)"""

    def __post_init__(self) -> None:
        if not (1 <= self.hidden <= 8192 and 1 <= self.layers <= 64 and 1 <= self.ensemble <= 64):
            raise InputError(f"invalid model sizes (hidden {self.hidden} in [1, 8192], layers {self.layers} in "
                             f"[1, 64], ensemble {self.ensemble} in [1, 64])", field="dynamics")


class _EnsembleLinear(nn.Module):
    """``M`` independent linear layers applied to ``(M, B, in)``."""

    def __init__(self, members: int, n_in: int, n_out: int, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter((torch.rand(members, n_in, n_out, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(members, 1, n_out, generator=generator) * 2 - 1) * bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class _EnsembleMLP(nn.Module):
    def __init__(self, members: int, n_in: int, n_out: int, hidden: int, layers: int, generator: torch.Generator
                 ) -> None:
        super().__init__()
        dims = [n_in] + [hidden] * layers + [n_out]
        self.layers = nn.ModuleList(_EnsembleLinear(members, a, b, generator) for a, b in zip(dims[:-1], dims[1:],
                                                                                              strict=True))
        last = self.layers[-1]
        assert isinstance(last, _EnsembleLinear)
        with torch.no_grad():  # start near the prior (small increments)
            last.weight.mul_(0.1)
            last.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.nn.functional.silu(layer(x))
        return self.layers[-1](x)


class KeypointMLPDynamics(KeypointDynamics):
    """Learned keypoint dynamics (see the module docstring).

    Args:
        n_joints, n_keypoints: state sizes (``z`` has ``3 * n_keypoints`` entries).
        config: the members' size (default: :class:`KeypointMLPConfig`'s defaults).
        lower, upper: optional joint limits applied to predicted joint states (as the robot does).
        seed: initialisation seed.
    """

    stats: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor

    def __init__(self, n_joints: int, n_keypoints: int, config: KeypointMLPConfig | None = None, *,
                 lower: torch.Tensor | None = None, upper: torch.Tensor | None = None, seed: int = 0) -> None:
        super().__init__()
        config = config if config is not None else KeypointMLPConfig()
        hidden, layers, ensemble = config.hidden, config.layers, config.ensemble
        if n_joints < 1 or n_keypoints < 1:
            raise InputError(f"invalid model sizes (joints {n_joints}, keypoints {n_keypoints})", field="dynamics")
        self.config = config
        self.n_joints = n_joints
        self.n_keypoints = n_keypoints
        self.hparams = {"n_joints": n_joints, "n_keypoints": n_keypoints, "hidden": hidden, "layers": layers,
                        "ensemble": ensemble, "seed": seed}
        J, D = n_joints, 3 * n_keypoints
        g = torch.Generator().manual_seed(seed)
        self.step_net = _EnsembleMLP(ensemble, 2 * J + D, J + D, hidden, layers, g)
        self.readout_net = _EnsembleMLP(ensemble, J, D, hidden, layers, g)
        # Normalisation statistics: rows = mean, std of q, z, u, dq (beyond u), dz.
        self.register_buffer("stats", torch.zeros(2, 3 * J + 2 * D))
        self.stats[1] = 1.0
        self.register_buffer("lower", torch.full((J,), -torch.inf) if lower is None else lower.float().clone())
        self.register_buffer("upper", torch.full((J,), torch.inf) if upper is None else upper.float().clone())

    @property
    def ensemble(self) -> int:
        return int(self.hparams["ensemble"])

    def _slices(self) -> dict[str, slice]:
        J, D = self.n_joints, 3 * self.n_keypoints
        return {"q": slice(0, J), "z": slice(J, J + D), "u": slice(J + D, 2 * J + D),
                "dq": slice(2 * J + D, 3 * J + D), "dz": slice(3 * J + D, 3 * J + 2 * D)}

    def _norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        s = self._slices()[name]
        return (x - self.stats[0, s]) / self.stats[1, s]

    def _denorm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        s = self._slices()[name]
        return x * self.stats[1, s] + self.stats[0, s]

    def set_statistics(self, q: torch.Tensor, z: torch.Tensor, u: torch.Tensor, q_next: torch.Tensor,
                       z_next: torch.Tensor) -> None:
        """Standardisation from training transitions (flattened: ``(N, J)``, ``(N, D)``, ...)."""
        parts = [q, z, u, q_next - q - u, z_next - z]
        mean = torch.cat([p.mean(0) for p in parts])
        std = torch.cat([p.std(0).clamp_min(1e-3) for p in parts])
        self.stats.copy_(torch.stack([mean, std]))

    def step_members(self, q: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member next states ``(M, B, J)`` and ``(M, B, D)`` from ``(B, J)``, ``(B, D)``, ``(B, J)``."""
        x = torch.cat([self._norm("q", q), self._norm("z", z), self._norm("u", u)], dim=-1)
        out = self.step_net(x.unsqueeze(0).expand(self.ensemble, *x.shape))
        J = self.n_joints
        q_next = q + u + self._denorm("dq", out[..., :J])
        z_next = z + self._denorm("dz", out[..., J:])
        return torch.maximum(torch.minimum(q_next, self.upper), self.lower), z_next

    def step(self, q: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble-mean next state ``(q_{t+1} (B, J), z_{t+1} (B, D))``."""
        q_next, z_next = self.step_members(q, z, u)
        return q_next.mean(0), z_next.mean(0)

    def readout(self, q: torch.Tensor) -> torch.Tensor:
        """Keypoints ``(B, D)`` of joint states ``(B, J)`` (the start state of a rollout)."""
        out = self.readout_net(self._norm("q", q).unsqueeze(0).expand(self.ensemble, *q.shape))
        return self._denorm("z", out).mean(0)

    def rollout(self, q0: torch.Tensor, actions: torch.Tensor, z0: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Open-loop rollout; ``z0`` ``(B, k, 3)`` defaults to the readout of ``q0``."""
        B = q0.shape[0]
        q = torch.maximum(torch.minimum(q0, self.upper), self.lower)
        z = self.readout(q) if z0 is None else z0.reshape(B, -1)
        qs, zs = [q], [z]
        for t in range(actions.shape[1]):
            q, z = self.step(q, z, actions[:, t])
            qs.append(q)
            zs.append(z)
        return torch.stack(qs, 1), torch.stack(zs, 1).reshape(B, len(zs), self.n_keypoints, 3)

    def describe(self) -> dict[str, Any]:
        return {"kind": "keypoint_mlp", **self.hparams}

    @classmethod
    def from_description(cls, desc: Any, source: str | None = None) -> KeypointMLPDynamics:
        """A fresh (untrained) model of the kind :meth:`describe` describes; InputError for anything else."""
        keys = ("n_joints", "n_keypoints", "hidden", "layers", "ensemble", "seed")
        if not isinstance(desc, dict) or desc.get("kind") != "keypoint_mlp" or any(k not in desc for k in keys):
            raise InputError("not a keypoint MLP dynamics description", source=source, field="dynamics")
        try:
            config = KeypointMLPConfig(hidden=int(desc["hidden"]), layers=int(desc["layers"]),
                                       ensemble=int(desc["ensemble"]))
            return cls(int(desc["n_joints"]), int(desc["n_keypoints"]), config, seed=int(desc["seed"]))
        except (InputError, TypeError, ValueError) as exc:
            raise InputError(f"invalid description ({exc})", source=source, field="dynamics") from None

    def save(self, run_dir: str | Path) -> None:
        """Write ``RUN_DIR/model.{json,safetensors}`` (crash-safe; read back with :meth:`load`)."""
        from mbirl.reporting.checkpoint import save_checkpoint

        save_checkpoint(Path(run_dir) / MODEL_FILE, {"model": self.state_dict(), "description": self.describe()})

    @classmethod
    def load(cls, run_dir: str | Path) -> KeypointMLPDynamics:
        """Read the model that :meth:`save` (``mbirl visual train-dynamics``) wrote into ``run_dir``, in eval mode.

        Raises InputError when ``run_dir`` holds no model or an inconsistent one.
        """
        from mbirl.reporting.checkpoint import load_checkpoint, restoring

        run_dir = Path(run_dir)
        where = str(run_dir / f"{MODEL_FILE}.json")
        if not (run_dir / f"{MODEL_FILE}.json").is_file():
            raise InputError("no trained dynamics model here (run `mbirl visual train-dynamics` first)",
                             source=str(run_dir))
        state = load_checkpoint(run_dir / MODEL_FILE)
        with restoring(where, "inconsistent dynamics file"):
            model = cls.from_description(state["description"], source=where)
            model.load_state_dict(state["model"])
        model.eval()
        return model


@dataclass
class DynamicsTrainConfig:
    """Training of :class:`KeypointMLPDynamics` (the minibatch order comes from the caller's generator)."""

    steps: int = 2000
    """gradient steps"""
    batch_size: int = 64
    """trajectories per step"""
    lr: float = 2e-3
    """AdamW learning rate (cosine-decayed)"""
    weight_decay: float = 1e-5
    """AdamW weight decay"""
    one_step_weight: float = 0.5
    """weight of the teacher-forced one-step loss next to the open-loop rollout loss"""
    huber_delta: float | None = 0.05
    """None for squared errors, else a Huber loss with this threshold (standardised units) so the few badly
    detected keypoints do not dominate"""

    def __post_init__(self) -> None:
        if self.steps < 0 or not 1 <= self.batch_size <= 2**16 or not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"invalid dynamics training settings (steps {self.steps}, batch {self.batch_size}, "
                             f"lr {self.lr})", field="dynamics")
        if self.huber_delta is not None and not (math.isfinite(self.huber_delta) and self.huber_delta > 0):
            raise InputError(f"must be a positive number or null, got {self.huber_delta}", field="huber_delta")


def keypoint_dynamics_optimizer(model: KeypointMLPDynamics, cfg: DynamicsTrainConfig) -> torch.optim.Optimizer:
    """The optimiser :func:`fit_keypoint_dynamics` trains ``model`` with (a checkpoint keeps its state)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _penalty(err: torch.Tensor, delta: float | None) -> torch.Tensor:
    """Squared error, or twice the Huber loss (equal to it below ``delta``, linear above: robust to outliers)."""
    if delta is None:
        return err.pow(2)
    return 2.0 * torch.nn.functional.huber_loss(err, torch.zeros_like(err), reduction="none", delta=delta)


def _losses(model: KeypointMLPDynamics, q: torch.Tensor, z: torch.Tensor, u: torch.Tensor,
            delta: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-member open-loop, one-step and readout losses (standardised units) on trajectories ``(B, T+1, .)``."""
    M, T = model.ensemble, u.shape[1]
    zs = model.stats[1, model._slices()["z"]]
    qs = model.stats[1, model._slices()["q"]]
    # open loop from the true start, every member on its own
    qm = q[:, 0].unsqueeze(0).expand(M, *q[:, 0].shape)
    zm = z[:, 0].unsqueeze(0).expand(M, *z[:, 0].shape)
    open_loop = torch.zeros(M, device=q.device)
    for t in range(T):
        qn, zn = [], []
        for m in range(M):  # members advance on their own states
            a, b = model.step_members(qm[m], zm[m], u[:, t])
            qn.append(a[m])
            zn.append(b[m])
        qm, zm = torch.stack(qn), torch.stack(zn)
        open_loop = open_loop + _penalty((zm - z[:, t + 1]) / zs, delta).mean((1, 2)) + _penalty(
            (qm - q[:, t + 1]) / qs, delta).mean((1, 2))
    open_loop = open_loop / T
    # teacher-forced one step on all transitions
    B = q.shape[0]
    q1, z1 = model.step_members(q[:, :-1].reshape(B * T, -1), z[:, :-1].reshape(B * T, -1), u.reshape(B * T, -1))
    one = _penalty((z1 - z[:, 1:].reshape(B * T, -1)) / zs, delta).mean((1, 2)) + _penalty(
        (q1 - q[:, 1:].reshape(B * T, -1)) / qs, delta).mean((1, 2))
    flat_q = q.reshape(-1, q.shape[-1])
    r = model.readout_net(model._norm("q", flat_q).unsqueeze(0).expand(M, *flat_q.shape))
    read = _penalty(r - model._norm("z", z.reshape(-1, z.shape[-1])), delta).mean((1, 2))
    return open_loop, one, read


def fit_keypoint_dynamics(model: KeypointMLPDynamics, q: np.ndarray, z: np.ndarray, actions: np.ndarray,
                          cfg: DynamicsTrainConfig, *, generator: torch.Generator, start_step: int = 0,
                          optimizer_state: dict[str, Any] | None = None,
                          on_step: Callable[[int, dict[str, float], dict[str, Any]], None] | None = None
                          ) -> dict[str, Any]:
    """Train ``model`` on trajectories ``q (N, T+1, J)``, ``z (N, T+1, k, 3)``, ``actions (N, T, J)``.

    ``on_step(step, scalars, state)`` is called after every step (logging, checkpoints); ``state`` holds the
    optimiser state for resuming with ``start_step`` and ``optimizer_state`` (``generator`` carries the minibatch
    order). The data goes to the model's device. Returns the final optimiser state.
    """
    N, T1, J = q.shape
    if z.shape[:2] != (N, T1) or actions.shape != (N, T1 - 1, J) or J != model.n_joints \
            or z.shape[2] != model.n_keypoints:
        raise InputError(f"inconsistent training data q {q.shape}, z {z.shape}, actions {actions.shape}",
                         field="dynamics")
    device = model.stats.device
    qt = torch.as_tensor(q, dtype=torch.float32, device=device)
    zt = torch.as_tensor(z, dtype=torch.float32, device=device).reshape(N, T1, -1)
    ut = torch.as_tensor(actions, dtype=torch.float32, device=device)
    if start_step == 0:
        model.set_statistics(qt[:, :-1].reshape(-1, J), zt[:, :-1].reshape(N * (T1 - 1), -1), ut.reshape(-1, J),
                             qt[:, 1:].reshape(-1, J), zt[:, 1:].reshape(N * (T1 - 1), -1))
    params = list(model.parameters())
    opt = keypoint_dynamics_optimizer(model, cfg)
    if optimizer_state is not None:
        load_optimizer_state(opt, optimizer_state)
    model.train()
    for step in range(start_step + 1, cfg.steps + 1):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / max(cfg.steps, 1)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, N, (min(cfg.batch_size, N),), generator=generator, device=generator.device).to(device)
        open_loop, one, read = _losses(model, qt[idx], zt[idx], ut[idx], cfg.huber_delta)
        loss = (open_loop + cfg.one_step_weight * one + read).sum()
        check_finite(loss, "keypoint-dynamics loss", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        check_finite(torch.nn.utils.clip_grad_norm_(params, 10.0), "keypoint-dynamics gradient norm", step)
        opt.step()
        if on_step is not None:
            on_step(step, {"losses/open_loop": float(open_loop.detach().mean()),
                           "losses/one_step": float(one.detach().mean()), "losses/readout": float(read.detach().mean()),
                           "charts/lr": lr},
                    {"optimizer": opt.state_dict()})
    model.eval()
    return {"optimizer": opt.state_dict()}


@torch.no_grad()
def dynamics_errors(model: KeypointMLPDynamics, q: np.ndarray, z: np.ndarray, actions: np.ndarray,
                    horizon: int) -> dict[str, float]:
    """Keypoint prediction errors (mean Euclidean distance per keypoint, robot units) on trajectories.

    ``one_step``: from the true ``(q_t, z_t)``; ``open_loop``: ``horizon`` steps from the true start, at the
    last step (``open_loop_mean`` averages steps 1..horizon); ``readout``: ``h(q)`` against ``z``. Computed on the
    model's device.
    """
    N, T1, J = q.shape
    horizon = min(horizon, T1 - 1)
    device = model.stats.device
    qt = torch.as_tensor(q, dtype=torch.float32, device=device)
    zt = torch.as_tensor(z, dtype=torch.float32, device=device).reshape(N, T1, -1)
    ut = torch.as_tensor(actions, dtype=torch.float32, device=device)
    k = model.n_keypoints
    _, z1 = model.step(qt[:, :-1].reshape(-1, J), zt[:, :-1].reshape(N * (T1 - 1), -1), ut.reshape(-1, J))
    one = (z1 - zt[:, 1:].reshape(N * (T1 - 1), -1)).reshape(-1, k, 3).norm(dim=-1).mean()
    _, zr = model.rollout(qt[:, 0], ut[:, :horizon], zt[:, 0].reshape(N, k, 3))
    err = (zr - zt[:, : horizon + 1].reshape(N, horizon + 1, k, 3)).norm(dim=-1)  # (N, h+1, k)
    read = (model.readout(qt.reshape(-1, J)) - zt.reshape(N * T1, -1)).reshape(-1, k, 3).norm(dim=-1).mean()
    return {"one_step": float(one), "open_loop": float(err[:, horizon].mean()),
            "open_loop_mean": float(err[:, 1:].mean()), "readout": float(read), "horizon": float(horizon)}
