"""Pixel observations: the renderers and the frame-stacking wrapper, demonstrations rendered from their states, the
shared-frame replay buffer, the encoder / latent-model gradient path, MAIRL from pixels end to end (checkpoint and
exact resume) and its input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mbirl.algorithms.mairl import MAIRLConfig, build_mairl, model_based_rollout_loss
from mbirl.algorithms.policies import GaussianPolicy
from mbirl.data.frames import FrameDemos, FrameReplayBuffer
from mbirl.dynamics.latent import ConvDecoder, ConvEncoder, latent_model_loss
from mbirl.dynamics.models import MLPModel
from mbirl.envs.pixels import (
    PIXEL_RENDERERS,
    PendulumRenderer,
    check_pixel_env,
    make_pixel_env,
    set_env_state,
    stack_indices,
)
from mbirl.errors import InputError
from mbirl.experts.demos import demo_stats
from mbirl.rewards.discriminator import AIRLDiscriminator

PENDULUM = "data/demos/Pendulum-v1.npz"
TINY = {"obs": "pixels", "dynamics": "mlp", "warmup_steps": 60, "n_rollouts": 2, "horizon": 5, "model_steps": 1,
        "model_pretrain_steps": 2, "pixel_batch_size": 8, "latent_dim": 8, "policy_hidden": (16,),
        "disc_hidden": (16,), "replay_size": 400}


def _pendulum_state(theta: float) -> np.ndarray:
    return np.array([math.cos(theta), math.sin(theta), 0.0], np.float32)


def _rod_centroid(frame: np.ndarray) -> tuple[float, float]:
    """(column, row) offsets of the red rod's pixels from the frame's centre (rows grow downwards)."""
    red = (frame[..., 0].astype(int) - frame[..., 1].astype(int)) > 60
    rows, cols = np.nonzero(red)
    return float(cols.mean()) + 0.5 - frame.shape[1] / 2, float(rows.mean()) + 0.5 - frame.shape[0] / 2


# ----- renderers and the wrapper ----------------------------------------------------------------------------------
def test_pendulum_renderer_is_deterministic_and_draws_the_rod_where_theta_points():
    r = PendulumRenderer()
    thetas = np.linspace(-math.pi, math.pi, 9)
    states = np.stack([_pendulum_state(t) for t in thetas])
    batch = r.render_batch(states)
    assert batch.shape == (9, 64, 64, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch, np.stack([r.render(s) for s in states]))  # alone or in a batch
    np.testing.assert_array_equal(batch, PendulumRenderer().render_batch(states))  # another renderer
    x, y = _rod_centroid(r.render(_pendulum_state(0.0)))
    assert abs(x) < 0.5 and y < -8  # upright: straight up
    x, y = _rod_centroid(r.render(_pendulum_state(math.pi)))
    assert abs(x) < 0.5 and y > 8  # hanging down
    x, y = _rod_centroid(r.render(_pendulum_state(math.pi / 2)))
    assert x < -8 and abs(y) < 0.5  # positive theta turns counter-clockwise (gymnasium's own drawing)
    # as theta grows from 0 the tip sweeps left, then down: the centroid's angle follows theta
    angles = [math.atan2(-_rod_centroid(r.render(_pendulum_state(t)))[0], -_rod_centroid(
        r.render(_pendulum_state(t)))[1]) for t in (0.2, 0.6, 1.0, 1.4)]
    np.testing.assert_allclose(angles, [0.2, 0.6, 1.0, 1.4], atol=0.05)
    # anti-aliased edges: intermediate values exist, and the background is untouched far from the rod
    frame = r.render(_pendulum_state(0.3))
    assert len(np.unique(frame[..., 1])) > 5 and (frame[60:, :] == 255).all()


def test_wrapper_stacks_frames_oldest_first_and_keeps_the_state():
    env = make_pixel_env("Pendulum-v1", frame_stack=3)
    renderer = PendulumRenderer()
    obs, info = env.reset(seed=0)
    assert obs.shape == (9, 64, 64) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    first = renderer.render(info["state"]).transpose(2, 0, 1)
    for i in range(3):  # a reset repeats its first frame
        np.testing.assert_array_equal(obs[3 * i:3 * i + 3], first)
    prev = obs
    for _ in range(4):
        obs, _, _, _, info = env.step(np.array([1.5], np.float32))
        np.testing.assert_array_equal(obs[:6], prev[3:])  # shifted by one frame
        np.testing.assert_array_equal(obs[6:], renderer.render(info["state"]).transpose(2, 0, 1))  # newest last
        prev = obs
    assert not np.array_equal(obs[:3], obs[6:])  # the rod moved
    env.close()


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "InvertedPendulum-v5"])
def test_demonstrations_rendered_from_states_are_the_frames_the_agent_sees(env_id):
    """Frames are drawn from the state rounded to float32 (what demo files hold): a demonstration rendered from its
    stored states equals, stack by stack, what the wrapper showed in the episode; and an environment set to a stored
    state takes a real step to the same frame as the original."""
    env, twin = make_pixel_env(env_id, frame_stack=2), make_pixel_env(env_id, frame_stack=2)
    env.action_space.seed(0)
    obs, info = env.reset(seed=3)
    twin.reset(seed=99)
    observations, states = [obs], [np.asarray(info["state"], np.float32)]
    for _ in range(25):
        a = env.action_space.sample()
        set_env_state(twin, states[-1])
        obs, _, terminated, truncated, info = env.step(a)
        twin_obs, _, _, _, twin_info = twin.step(a)
        np.testing.assert_allclose(twin_info["state"], info["state"], atol=1e-5)
        diff = np.abs(twin_obs[-3:].astype(int) - obs[-3:].astype(int))
        assert diff.max() <= 8 and (diff > 0).mean() < 0.01
        observations.append(obs)
        states.append(np.asarray(info["state"], np.float32))
        if terminated or truncated:
            break
    demos = FrameDemos.render(env_id, [np.stack(states)], frame_stack=2)
    idx = np.arange(len(states) - 1)
    np.testing.assert_array_equal(demos.observations(idx), np.stack(observations[:-1]))
    np.testing.assert_array_equal(demos.next_observations(idx), np.stack(observations[1:]))
    env.close()
    twin.close()


def test_states_that_cannot_be_set_and_environments_without_a_renderer_are_refused():
    good = np.stack([_pendulum_state(0.1 * t) for t in range(5)])
    bad = good.copy()
    bad[2, :2] = [0.5, 0.5]  # cos^2 + sin^2 != 1: no angle has this observation
    with pytest.raises(InputError, match=r"episode 1.*state 2 has cos\^2 \+ sin\^2 = 0.5000"):
        FrameDemos.render("Pendulum-v1", [good, bad], frame_stack=3)
    nan = good.copy()
    nan[4, 2] = np.nan
    with pytest.raises(InputError, match="state 4 is not finite"):
        FrameDemos.render("Pendulum-v1", [nan], frame_stack=3)
    with pytest.raises(InputError, match=r"shape \(N, 3\)"):
        FrameDemos.render("Pendulum-v1", [good[:, :2]], frame_stack=3)
    with pytest.raises(InputError, match="no pixel renderer for 'CartPole-v1'.*Pendulum-v1, InvertedPendulum-v5"):
        check_pixel_env("CartPole-v1")
    with pytest.raises(InputError, match="frame_stack"):
        make_pixel_env("Pendulum-v1", frame_stack=0)
    with pytest.raises(InputError, match="not \\[qpos, qvel\\]"):
        set_env_state(make_pixel_env("InvertedPendulum-v5", frame_stack=1), np.zeros(3))
    assert "InvertedPendulum-v5" in PIXEL_RENDERERS


def test_stack_indices_pad_the_episode_start():
    np.testing.assert_array_equal(stack_indices(4, 3), [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]])


# ----- the replay buffer -------------------------------------------------------------------------------------------
def _episodes(n_envs: int, steps: int, frame_stack: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Interleaved transitions of ``n_envs`` Pendulum pixel environments (one resets halfway)."""
    envs = [make_pixel_env("Pendulum-v1", frame_stack=frame_stack) for _ in range(n_envs)]
    obs = [e.reset(seed=i)[0] for i, e in enumerate(envs)]
    out = []
    for t in range(steps):
        for i, e in enumerate(envs):
            a = np.array([math.sin(t + i)], np.float32)
            nxt = e.step(a)[0]
            out.append((obs[i], a, nxt, 0.0))
            obs[i] = e.reset(seed=10 + i)[0] if (i == 0 and t == steps // 2) else nxt
    return out


def test_frame_replay_buffer_shares_frames_and_round_trips_exactly():
    k = 3
    transitions = _episodes(2, 12, k)
    buf = FrameReplayBuffer(100, frame_stack=k, frame_shape=(3, 64, 64), act_dim=1, streams=2)
    for o, a, n, d in transitions:
        buf.add(o[None], a[None], n[None], np.array([d], np.float32))
    idx = buf.recent_indices(len(buf))[::-1]
    b = buf.batch(idx)
    np.testing.assert_array_equal(b.obs, np.stack([t[0] for t in transitions]))
    np.testing.assert_array_equal(b.next_obs, np.stack([t[2] for t in transitions]))
    # one frame per transition plus one per episode start (3 episodes), not 2 k per transition
    assert buf.held_frames() == len(transitions) + 3
    copy = FrameReplayBuffer(100, frame_stack=k, frame_shape=(3, 64, 64), act_dim=1)
    copy.load_state_dict(buf.state_dict())
    c = copy.batch(copy.recent_indices(len(copy))[::-1])
    for name in ("obs", "act", "next_obs", "done"):
        np.testing.assert_array_equal(getattr(c, name), getattr(b, name))
    # a full ring overwrites the oldest transitions and frees their frames
    small = FrameReplayBuffer(5, frame_stack=k, frame_shape=(3, 64, 64), act_dim=1, streams=2)
    small.add(b.obs, b.act, b.next_obs, b.done)
    assert len(small) == 5 and small.held_frames() <= 5 + 2 * k
    np.testing.assert_array_equal(small.batch(small.recent_indices(5)).obs, b.obs[::-1][:5])
    with pytest.raises(InputError, match="stacks of shape"):
        small.add(b.obs[:, :3], b.act, b.next_obs[:, :3], b.done)


# ----- encoder, latent model and the gradient path ---------------------------------------------------------------
def test_encoder_decoder_shapes_and_the_latent_loss_trains_all_three():
    torch.manual_seed(0)
    enc, dec = ConvEncoder(9, latent_dim=6, size=64), ConvDecoder(9, latent_dim=6, size=64)
    model = MLPModel(6, 1, hidden=8)
    obs = torch.randint(0, 256, (4, 9, 64, 64), dtype=torch.uint8)
    z = enc(obs)
    assert z.shape == (4, 6) and z.abs().max() <= 1 and dec(z).shape == (4, 9, 32, 32)  # half resolution
    loss, stats = latent_model_loss(enc, dec, model, obs, torch.zeros(4, 1), obs.flip(0), recon_weight=1.0)
    loss.backward()
    for part in (enc, dec, model):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert math.isfinite(stats["model"]) and stats["recon"] > 0
    with pytest.raises(InputError, match="expected observations"):
        enc(obs[:, :3])


def _latent_rollout_pieces(dtype: torch.dtype = torch.float64):
    torch.manual_seed(1)
    latent, k = 4, 2
    enc = ConvEncoder(3 * k, latent_dim=latent, size=64)
    policy = GaussianPolicy(latent, np.array([-10.0], np.float32), np.array([10.0], np.float32),
                            np.array([0.3], np.float32), hidden=(8,)).to(dtype)
    model = MLPModel(latent, 1, hidden=8).to(dtype)
    disc = AIRLDiscriminator(latent, 1, gamma=0.9, hidden=(8,)).to(dtype)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (2, 3 * k, 64, 64), dtype=np.uint8) for _ in range(4)]

    def env_step(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        env_step.t += 1  # type: ignore[attr-defined]
        n = len(actions)
        return frames[env_step.t][:n], np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)  # type: ignore

    env_step.t = 0  # type: ignore[attr-defined]

    def encode(obs: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return enc(torch.as_tensor(obs)).to(dtype)

    return policy, model, disc, encode, frames, env_step


def test_policy_gradient_flows_through_the_latent_model_and_matches_finite_differences():
    policy, model, disc, encode, frames, env_step = _latent_rollout_pieces()
    o0 = frames[0]
    s0 = encode(o0)
    res = model_based_rollout_loss(policy, model, disc.reward, s0, env_step, horizon=1, gamma=0.9, alpha=0.0,
                                   generator=torch.Generator().manual_seed(0), encode=encode, obs0=o0)
    assert res.obs.dtype == np.uint8 and res.obs.shape == (2, 6, 64, 64)  # the replay gets frames, not latents
    np.testing.assert_array_equal(res.next_obs, frames[1])
    param = policy.net[-1].weight
    res.loss.backward()
    grad = param.grad.clone()
    assert grad.abs().sum() > 0

    # the surrogate the update differentiates: s1 = f(s0, a) + c with the correction c = enc(o1) - f(s0, a0) frozen
    with torch.no_grad():
        a0, _ = policy.sample(s0, torch.Generator().manual_seed(0))
        c = encode(frames[1]) - model(s0, a0)

    def surrogate() -> float:
        with torch.no_grad():
            a, _ = policy.sample(s0, torch.Generator().manual_seed(0))
            r = disc.reward(s0, a, model(s0, a) + c, torch.zeros(2, dtype=s0.dtype))
            return float(-r.sum() / 2)

    fd = torch.zeros_like(param)
    h = 1e-6
    for i in range(param.shape[0]):
        for j in range(param.shape[1]):
            with torch.no_grad():
                param[i, j] += h
                up = surrogate()
                param[i, j] -= 2 * h
                down = surrogate()
                param[i, j] += h
            fd[i, j] = (up - down) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)

    # the state's value is the encoding of the real frames; its gradient is the model's: a model that ignores the
    # action leaves no path from the action to the next state, and the policy's gradient goes with it (the AIRL
    # reward's g(s, a) term aside, which is removed here by a state-only discriminator)
    policy, model, _, encode, frames, env_step = _latent_rollout_pieces()
    disc = AIRLDiscriminator(4, 1, gamma=0.9, hidden=(8,), state_only=True).double()
    for dead in (False, True):
        if dead:
            with torch.no_grad():
                model.net[0].weight[:, 4:] = 0  # the action's columns of the first layer
        env_step.t = 0
        policy.zero_grad()
        res = model_based_rollout_loss(policy, model, disc.reward, encode(frames[0]), env_step, horizon=1,
                                       gamma=0.9, alpha=0.0, generator=torch.Generator().manual_seed(0),
                                       encode=encode, obs0=frames[0])
        res.loss.backward()
        moved = sum(float(p.grad.abs().sum()) for p in policy.parameters() if p.grad is not None)
        assert (moved == 0) == dead


# ----- the trainer -------------------------------------------------------------------------------------------------
def test_pixel_config_is_validated():
    cases = (({"obs": "rgb"}, "obs"), ({"frame_stack": 0}, "frame_stack"), ({"frame_stack": 17}, "frame_stack"),
             ({"latent_dim": 0}, "latent_dim"), ({"recon_weight": -1.0}, "recon_weight"),
             ({"recon_weight": math.nan}, "recon_weight"), ({"pixel_batch_size": 0}, "pixel_batch_size"))
    for bad, field in cases:
        with pytest.raises(InputError, match=f"field '{field}'"):
            MAIRLConfig(**bad)


def test_pixel_trainer_resumes_exactly_from_its_state():
    """A pixel trainer's state (encoder, decoder, their optimiser moments, the frame replay buffer, the
    environments' frame stacks) is complete: loaded into a fresh trainer, training continues bit-identically."""
    demos = demo_stats(PENDULUM)
    cfg = MAIRLConfig(**TINY)
    full = build_mairl(cfg, demos, seed=5)
    assert full.describe()["obs"] == "pixels"
    for _ in range(2):
        full.iteration_step()
    state = full.state_dict()
    assert {"encoder", "decoder"} <= set(state) and state["buffer"]["frames"].dtype == torch.uint8
    # the model optimiser holds the encoder's and decoder's moments too
    n_params = len(list(full.model.parameters())) + len(list(full.encoder.parameters())) + \
        len(list(full.decoder.parameters()))
    assert len(state["opt_model"]["state"]) == n_params
    from mbirl.reporting.checkpoint import flatten_state, unflatten_state

    tensors, skeleton = flatten_state(state)  # what a checkpoint file holds
    resumed = build_mairl(cfg, demos, seed=5)
    resumed.load_state_dict(unflatten_state(skeleton, {k: v.clone() for k, v in tensors.items()}))
    a, b = full.iteration_step(), resumed.iteration_step()
    assert a.scalars == b.scalars
    for name, p in full.encoder.state_dict().items():
        torch.testing.assert_close(resumed.encoder.state_dict()[name], p, rtol=0, atol=0)
    assert full.evaluate(1).returns.tolist() == resumed.evaluate(1).returns.tolist()


def test_pixel_trainer_works_on_the_device_its_configuration_names(monkeypatch):
    """Built on torch's ``meta`` device (test_device.py's stand-in for CUDA: it refuses CPU tensors as CUDA does),
    every network and optimiser state of the pixel trainer is there, and whole iterations (real segment with the
    latent correction, model block, discriminator, imagined updates, behaviour cloning) mix in no CPU tensor."""
    from test_device import META, PlaceholderValues, _tensors_of

    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", False)
    demos = demo_stats(PENDULUM)
    cfg = MAIRLConfig(**{**TINY, "warmup_steps": 2, "horizon": 1, "policy_utd": 1.0, "imagine_batch": 2,
                         "imagine_horizon": 1, "bc_steps": 1, "bc_weight": 0.1, "ema_rate": 0.9,
                         "pixel_batch_size": 2})
    with PlaceholderValues():
        trainer = build_mairl(cfg, demos, seed=0, device=META)
        trainer.iteration_step()
        trainer.act_deterministic(np.zeros((9, 64, 64), np.uint8))
        assert trainer.expert_batch(4).obs.device == META and trainer.start_states(4).device == META
        trainer.state_dict()
    tensors = _tensors_of(trainer) | {f"{part}.{n}": t for part in ("encoder", "decoder")
                                      for n, t in getattr(trainer, part).state_dict().items()}
    assert len([n for n in tensors if n.startswith(("encoder", "decoder"))]) == 20
    assert {n for n, t in tensors.items() if t.device != META} == set()


def test_cli_refuses_pixels_without_a_renderer(tmp_path, capsys):
    from mbirl.cli import main

    for args, message in ((["--demos", "data/demos/CartPole-v1.npz", "--obs", "pixels"], "no pixel renderer"),
                          (["--demos", PENDULUM, "--obs", "rgb"], "unknown observation mode 'rgb'"),
                          (["--demos", PENDULUM, "--obs", "pixels", "--frame-stack", "0"], "field 'frame_stack'")):
        with pytest.raises(SystemExit) as exc:
            main(["mairl", "train", *args, "--run-dir", str(tmp_path / "r"), "--no-progress"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_state_only_tools_refuse_a_pixel_run_in_one_line(tmp_path):
    """The Python API's run loader (policy and reward over environment observations, used by the reward tools) and
    the state-model comparison refuse a pixel run by its configuration, before building anything."""
    from mbirl.api import load_run
    from mbirl.experiments.mairl_run import MAIRLRunConfig, ModelComparisonConfig, compare_models
    from mbirl.validation import config_to_dict

    run = tmp_path / "run"
    run.mkdir()
    cfg = MAIRLRunConfig(demos=PENDULUM, trainer=MAIRLConfig(obs="pixels"))
    (run / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    with pytest.raises(InputError, match="observes pixels.*mbirl mairl eval"):
        load_run(run)
    with pytest.raises(InputError, match="observes pixels"):
        compare_models(ModelComparisonConfig(demos=PENDULUM, run_dir=str(run), steps=100), tmp_path / "out")


@pytest.mark.slow
def test_pixel_run_directory_checkpoints_resumes_exactly_and_evaluates(tmp_path):
    """A tiny ``mairl train --obs pixels`` run through the run-directory harness: stopped by its budget and
    resumed, it ends where the uninterrupted run does; evaluation and its video work from pixels."""
    from mbirl.experiments.mairl_run import MAIRLRunConfig, evaluate_run, run_mairl

    def cfg(env_steps: int) -> MAIRLRunConfig:
        return MAIRLRunConfig(demos=PENDULUM, env_steps=env_steps, eval_every=50, eval_episodes=1,
                              checkpoint_every=1, seed=2, trainer=MAIRLConfig(**TINY))

    full = run_mairl(cfg(120), tmp_path / "full", progress=False)
    assert full["obs"] == "pixels" and full["env_steps"] >= 120
    run_mairl(cfg(80), tmp_path / "split", progress=False)
    resumed = run_mairl(cfg(120), tmp_path / "split", resume=True, progress=False)
    timing = ("train_seconds", "seconds_per_1k_env_steps", "eval", "best_normalized_return")
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in full.items() if k not in timing}
    assert [e for e in resumed["eval"] if e in full["eval"]] == full["eval"]
    out = evaluate_run(tmp_path / "full", 1, video=tmp_path / "v.mp4")
    assert out["env_steps_trained"] == full["env_steps"] and (tmp_path / "v.mp4").stat().st_size > 1000
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["trainer"]["obs"] == "pixels" and saved["trainer"]["frame_stack"] == 3


def test_inverted_pendulum_renders_after_mujoco_was_imported_without_mujoco_gl():
    """MuJoCo picks its GL backend when first imported: a process that made a MuJoCo environment before MUJOCO_GL
    was set gets GLFW, which aborts without a display (the whole test suite died of it). The pixel renderer makes
    its own EGL context instead."""
    import os
    import subprocess
    import sys

    script = ("import gymnasium as gym, mujoco\n"
              "gym.make('InvertedPendulum-v5').reset(seed=0)\n"
              "from mbirl.envs.pixels import make_pixel_env\n"
              "obs, _ = make_pixel_env('InvertedPendulum-v5', frame_stack=1).reset(seed=0)\n"
              "print(obs.shape, float(obs.std()) > 1.0)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(3, 64, 64) True"
