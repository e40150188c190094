"""MAIRL from pixels: the trainer of :mod:`mbirl.algorithms.mairl` in the latent space of a convolutional encoder.

docs/design.md, "MAIRL from pixels". Observations are stacks of 64x64 RGB frames (:mod:`mbirl.envs.pixels`); one
encoder ``z = enc(o)`` (:class:`~mbirl.dynamics.latent.ConvEncoder`) gives the state of everything else: the
policy ``pi(a | z)``, the latent forward model ``z' = f_phi(z, a)`` and the discriminator. The policy update is
the state-mode update with ``s = z``::

    z_0     = enc(o_0)                                  (no gradient)
    a_t     = mu(z_t) + sigma * eps
    z_hat   = f_phi(z_t, a_t)                           (differentiable)
    o_env   = env.step(a_t)                             (the real next frames)
    z_{t+1} = z_hat + stopgrad(enc(o_env) - z_hat)      (the encoding of the real frames, the model's gradient)
    r_t     = f_omega(z_t, a_t, z_{t+1}) - alpha * stopgrad(log pi(a_t | z_t))

The encoder learns in the model block only, from the forward model's loss plus a reconstruction term
(:func:`~mbirl.dynamics.latent.latent_model_loss`, one optimiser for model, encoder and decoder); the policy's
and the discriminator's losses do not reach it.

The discriminator sees the latent state, detached, not pixels. Its reward then depends on ``z_{t+1} =
f_phi(z_t, a_t)`` exactly as in state mode; a pixel discriminator would need a decoder inside the rollout to
turn the model's latent prediction back into frames, and the policy's gradient would depend on how well that
decoder draws. It is also an MLP on ``latent_dim`` numbers instead of a second convolutional network over four
stacks per transition. Detached, it cannot shape the encoder to separate expert from agent by features the model
does not need: an encoder trained by the adversary would move the policy's input at every update. The price: the
discriminator's input drifts as the encoder learns; the encoder is pre-trained with the model after the warm-up
and the discriminator is retrained every ``disc_every`` iterations, so it follows the drift.

Imagined rollouts (``policy_utd > 0``) start from encoded replay or demonstration frames and cannot apply the task's
termination rule (it reads the state): they end by their horizon only.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbirl.algorithms.learner import EVAL_SEED, StepInfo
from mbirl.algorithms.mairl import MAIRL, MAIRLConfig, build_networks
from mbirl.algorithms.policies import Policy
from mbirl.data.frames import FrameDemos, FrameReplayBuffer
from mbirl.dynamics.ensemble import ModelEnsemble
from mbirl.dynamics.latent import ConvDecoder, ConvEncoder, latent_model_loss
from mbirl.dynamics.models import ForwardModel
from mbirl.dynamics.termination import TERMINATIONS, TerminationFn
from mbirl.envs.pixels import PIXEL_SIZE, check_pixel_env, make_pixel_env
from mbirl.errors import InputError, check_finite
from mbirl.experts.demos import DemoStats, check_demo_spaces
from mbirl.experts.rollout import EpisodeResult
from mbirl.nets import DEFAULT_DEVICE, resolve_device
from mbirl.rewards.discriminator import Discriminator
from mbirl.types import Trajectory, TransitionBatch

__all__ = ["PixelMAIRL", "build_pixel_mairl", "render_demos"]


def render_demos(demos: DemoStats, frame_stack: int) -> FrameDemos:
    """The demonstrations' frames: every stored state drawn as the agent would see it (no file is written). The
    last two results are kept (read-only), keyed by the states' bytes: a trainer built again in the same process
    (evaluation after training, a resumed run, tests) does not draw them again."""
    episodes = [np.asarray(t.obs) for t in demos.trajectories]
    digest = hashlib.sha256()
    for e in episodes:
        digest.update(f"{e.dtype}{e.shape}".encode())
        digest.update(np.ascontiguousarray(e).tobytes())
    key = (demos.env_id, frame_stack, digest.hexdigest())
    if key in _RENDERED:
        _RENDERED.move_to_end(key)
        return _RENDERED[key]
    frames = FrameDemos.render(demos.env_id, episodes, frame_stack, source=f"{demos.env_id} demonstrations")
    frames.frames.flags.writeable = False
    _RENDERED[key] = frames
    while len(_RENDERED) > 2:
        _RENDERED.popitem(last=False)
    return frames


_RENDERED: OrderedDict[tuple[str, int, str], FrameDemos] = OrderedDict()


def _never(s: torch.Tensor) -> torch.Tensor:
    return torch.zeros(s.shape[0], dtype=torch.bool, device=s.device)


class PixelMAIRL(MAIRL):
    """The MAIRL / MGAIL trainer on pixel observations (:func:`build_pixel_mairl` builds one from a config).

    Args:
        config: the hyper-parameters (``obs == "pixels"``).
        demos: the expert's transitions (states; their frames are ``frames``).
        policy, model, disc: the networks on latent states of width ``encoder.latent_dim``.
        encoder, decoder: the shared convolutional encoder and the decoder of its reconstruction term.
        frames: the demonstrations rendered (:func:`render_demos`), in the order of ``demos``' transitions.
        seed, device: as :class:`~mbirl.algorithms.mairl.MAIRL`'s (frames stay in host memory; minibatches go to
            ``device`` as uint8 and are converted there).
    """

    def __init__(self, config: MAIRLConfig, demos: DemoStats, policy: Policy, model: ForwardModel | ModelEnsemble,
                 disc: Discriminator, encoder: ConvEncoder, decoder: ConvDecoder, frames: FrameDemos, *,
                 seed: int, device: torch.device | str = DEFAULT_DEVICE) -> None:
        if config.obs != "pixels":
            raise InputError(f"the pixel trainer needs obs 'pixels', got '{config.obs}'", field="obs")
        check_pixel_env(demos.env_id)
        channels = 3 * config.frame_stack
        if encoder.in_channels != channels or decoder.out_channels != channels:
            raise InputError(f"encoder/decoder are for {encoder.in_channels}/{decoder.out_channels} channels, not "
                             f"{channels} ({config.frame_stack} frames)", field="frame_stack")
        if len(frames) != len(demos.obs) or frames.frames.shape[1] * config.frame_stack != channels:
            raise InputError(f"{len(frames)} rendered demonstration transitions for {len(demos.obs)}", field="frames")
        where = resolve_device(device)
        self.encoder, self.decoder, self.demo_frames = encoder.to(where), decoder.to(where), frames
        self.model_stats = {"model": math.nan, "recon": math.nan}
        super().__init__(config, demos, policy, model, disc, seed=seed, device=where)

    # ----- what the trainer observes ----------------------------------------------------------------------
    def _state_dim(self, demos: DemoStats) -> int:
        return self.encoder.latent_dim

    def _model_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.model.parameters(), *self.encoder.parameters(), *self.decoder.parameters()]

    def _make_buffer(self) -> FrameReplayBuffer:
        return FrameReplayBuffer(self.config.replay_size, frame_stack=self.config.frame_stack,
                                 frame_shape=(3, PIXEL_SIZE, PIXEL_SIZE), act_dim=self.act_dim,
                                 streams=self.config.n_rollouts)

    def _make_env(self) -> Any:
        return make_pixel_env(self.env_id, frame_stack=self.config.frame_stack)

    def _termination(self) -> tuple[TerminationFn, bool]:
        if self.config.policy_utd > 0 and self.env_id in TERMINATIONS:
            warnings.warn(f"{self.env_id}'s termination rule reads the state: imagined rollouts from pixels end "
                          "only by their horizon", stacklevel=3)
        return _never, True

    def _observation(self, obs: Any) -> np.ndarray:
        return np.asarray(obs, np.uint8)

    def encode(self, obs: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(torch.as_tensor(obs, device=self.device))

    def _minibatch(self) -> int:
        return self.config.pixel_batch_size

    def _set_normalizers(self) -> None:
        # latent states are bounded by the encoder's tanh: their statistics stay the identity (statistics fixed
        # now would go stale as the encoder learns); actions are scaled as in state mode
        scale = self.act_scale.clamp_min(1e-6)
        self.disc.act_scale.copy_(scale)
        for m in (self.model.members if isinstance(self.model, ModelEnsemble) else [self.model]):
            assert isinstance(m, ForwardModel)
            m.act_scale.copy_(scale)

    def _rollout_encoding(self, obs0: np.ndarray) -> dict[str, Any]:
        return {"encode": self.encode, "obs0": obs0}

    # ----- data -------------------------------------------------------------------------------------------
    def _latent_batch(self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, done: np.ndarray
                      ) -> TransitionBatch:
        z = self.encode(np.concatenate([obs, next_obs]))
        return TransitionBatch(z[: len(obs)], torch.as_tensor(act, device=self.device), z[len(obs):],
                               torch.as_tensor(done, device=self.device))

    def _agent_batch(self, idx: np.ndarray) -> TransitionBatch:
        b = self.buffer.batch(idx)
        return self._latent_batch(b.obs, b.act, b.next_obs, b.done)

    def expert_batch(self, n: int) -> TransitionBatch:
        idx = self.rng.integers(0, len(self.demos.obs), size=n)
        batch = self._latent_batch(self.demo_frames.observations(idx), self.expert_act[idx],
                                   self.demo_frames.next_observations(idx), self.demos.dones[idx])
        return self._policy_log_pi(batch)

    def demo_nll(self) -> torch.Tensor:
        """The policy's mean negative log-likelihood of ``pixel_batch_size`` demonstration transitions (their
        encoded frames; behaviour cloning, ``bc_steps`` / ``bc_weight``, trains the policy, not the encoder)."""
        idx = self.rng.integers(0, len(self.demos.obs), size=self.config.pixel_batch_size)
        obs = self.encode(self.demo_frames.observations(idx))
        act = torch.as_tensor(self.expert_act[idx], device=self.device)
        return -self.policy.log_prob(obs, act).mean()

    def start_states(self, n: int) -> torch.Tensor:
        c = self.config
        n_demo = int(round(c.demo_starts * n))
        window = self.buffer.recent_indices(c.start_window if c.start_window > 0 else self.buffer.size)
        replay = self.buffer.observations(window[self.rng.integers(0, len(window), size=n - n_demo)])
        demo = self.demo_frames.observations(self.rng.integers(0, len(self.demos.obs), size=n_demo))
        return self.encode(np.concatenate([replay, demo]))

    # ----- blocks -----------------------------------------------------------------------------------------
    def train_model(self, steps: int) -> float:
        """``steps`` updates of the forward model, encoder and decoder on replay minibatches; mean loss."""
        c = self.config
        losses, terms = [], []
        for _ in range(steps):
            b = self.buffer.batch(self.rng.integers(0, len(self.buffer), size=c.pixel_batch_size))
            dev = self.device
            loss, stats = latent_model_loss(self.encoder, self.decoder, self.model,
                                            torch.as_tensor(b.obs, device=dev), torch.as_tensor(b.act, device=dev),
                                            torch.as_tensor(b.next_obs, device=dev), recon_weight=c.recon_weight)
            check_finite(loss, "forward-model loss", self.iteration + 1)
            self.opt_model.zero_grad()
            loss.backward()
            self.opt_model.step()
            losses.append(float(loss.detach()))
            terms.append((stats["model"], stats["recon"]))
        if terms:
            self.model_stats = {"model": float(np.mean([t[0] for t in terms])),
                                "recon": float(np.mean([t[1] for t in terms]))}
        return float(np.mean(losses)) if losses else math.nan

    def iteration_step(self) -> StepInfo:
        info = super().iteration_step()
        for part, module in (("encoder", self.encoder), ("decoder", self.decoder)):
            for name, p in module.named_parameters():
                check_finite(p, f"{part} parameter '{name}'", self.iteration)
        info.scalars |= {"losses/latent_model": self.model_stats["model"],
                         "losses/reconstruction": self.model_stats["recon"]}
        return info

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "obs": "pixels", "frame_stack": self.config.frame_stack,
                "latent_dim": self.config.latent_dim}

    # ----- evaluation -------------------------------------------------------------------------------------
    def evaluate(self, episodes: int = 10, *, seed: int = EVAL_SEED, render: bool = False) -> EpisodeResult:
        """Deterministic episodes from pixels on the true reward (reset seeds ``seed + i``); the trajectories hold
        the states (``info["state"]``), ``frames`` the newest frame of every observation when ``render``."""
        if episodes < 1:
            raise InputError(f"must be >= 1, got {episodes}", field="episodes")
        env = self._make_env()
        returns, trajs, frames = [], [], []
        try:
            for ep in range(episodes):
                obs, info = env.reset(seed=seed + ep)
                states, acts, rews = [np.asarray(info["state"], np.float32)], [], []
                done = False
                while not done:
                    if render:
                        frames.append(np.asarray(obs[-3:]).transpose(1, 2, 0))
                    a = self.act_deterministic(obs)
                    obs, r, terminated, truncated, info = env.step(a)
                    states.append(np.asarray(info["state"], np.float32))
                    acts.append(np.asarray(a, np.float32))
                    rews.append(float(r))
                    done = terminated or truncated
                dones = np.zeros(len(acts), bool)
                dones[-1] = bool(terminated)
                trajs.append(Trajectory(obs=np.stack(states), acts=np.stack(acts), dones=dones,
                                        rews=np.asarray(rews, np.float32)))
                returns.append(float(np.sum(rews)))
        finally:
            env.close()
        return EpisodeResult(np.asarray(returns), trajs, frames)

    def record_video(self, path: str | Path, *, seed: int = 0, scale: int = 4, fps: int = 30) -> Path:
        """An ``.mp4`` of one deterministic episode as the policy sees it (the newest frame of each observation,
        enlarged ``scale`` times)."""
        import imageio.v2 as imageio

        path = Path(path)
        if path.suffix != ".mp4":
            raise InputError(f"video must end in .mp4, got '{path}'", field="video")
        frames = self.evaluate(1, seed=seed, render=True).frames
        path.parent.mkdir(parents=True, exist_ok=True)
        big = [np.kron(f, np.ones((scale, scale, 1), np.uint8)) for f in frames]
        imageio.mimsave(path, big, fps=fps, macro_block_size=8)  # type: ignore[arg-type]
        return path

    # ----- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "encoder": dict(self.encoder.state_dict()),
                "decoder": dict(self.decoder.state_dict())}

    def load_policy(self, state: dict[str, Any]) -> None:
        super().load_policy(state)
        self.encoder.load_state_dict(state["encoder"])
        self.decoder.load_state_dict(state["decoder"])


def build_pixel_mairl(config: MAIRLConfig, demos: DemoStats, *, seed: int,
                      device: torch.device | str = DEFAULT_DEVICE) -> PixelMAIRL:
    """The pixel trainer of ``config`` for the environment of ``demos``: checks that the environment has a pixel
    renderer and that the demonstrations fit its spaces, renders the demonstrations, then seeds torch with ``seed``
    and builds the policy, forward model and discriminator (as :func:`~mbirl.algorithms.mairl.build_mairl`, on
    ``latent_dim`` states), the encoder and the decoder, all on the CPU, then moves them to ``device``."""
    check_pixel_env(demos.env_id)
    _, space = check_demo_spaces(demos)
    frames = render_demos(demos, config.frame_stack)
    torch.manual_seed(seed)
    policy, model, disc = build_networks(config, demos, space, obs_dim=config.latent_dim)
    channels = 3 * config.frame_stack
    encoder = ConvEncoder(channels, latent_dim=config.latent_dim, size=PIXEL_SIZE)
    decoder = ConvDecoder(channels, latent_dim=config.latent_dim, size=PIXEL_SIZE)
    return PixelMAIRL(config, demos, policy, model, disc, encoder, decoder, frames, seed=seed, device=device)
