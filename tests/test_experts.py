"""Expert export (SB3 -> safetensors MLP), rollouts and demonstration files with normalisation metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbirl.data.demos import load_trajectories
from mbirl.errors import InputError
from mbirl.experts import (
    ExpertPolicy,
    demo_stats,
    export_sb3_policy,
    generate_expert_demos,
    make_env,
    normalized_return,
    random_policy,
    run_episodes,
)


@pytest.mark.parametrize(("algo", "env_id"), [("sac", "Pendulum-v1"), ("ppo", "CartPole-v1"),
                                              ("ppo", "Pendulum-v1"), ("td3", "Pendulum-v1")])
def test_export_matches_sb3_deterministic_actions(algo, env_id, tmp_path):
    from stable_baselines3 import PPO, SAC, TD3

    cls = {"sac": SAC, "ppo": PPO, "td3": TD3}[algo]
    model = cls("MlpPolicy", env_id, seed=0, device="cpu")
    policy = export_sb3_policy(model)
    env = make_env(env_id)
    obs = np.stack([env.observation_space.sample() for _ in range(20)]).astype(np.float32)
    ref, _ = model.predict(obs, deterministic=True)
    with torch.no_grad():
        ours = policy(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    policy.save(tmp_path / "p", {"env_id": env_id})
    loaded, extra = ExpertPolicy.load(tmp_path / "p")
    assert extra == {"env_id": env_id}
    np.testing.assert_allclose(loaded(torch.as_tensor(obs)).detach().numpy(), ours)


def test_export_bakes_in_vecnormalize_statistics(tmp_path):
    """A PPO trained on VecNormalize-d observations (the Hopper preset) exports a policy that acts on raw
    observations exactly as SB3 does on normalised ones, including the clipping; the statistics survive a
    save/load round trip."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=0), clip_obs=2.0)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(128)  # moves the running mean/var away from 0/1
    assert not np.allclose(venv.obs_rms.mean, 0.0)
    policy = export_sb3_policy(model, venv.obs_rms, venv.clip_obs, venv.epsilon)
    obs = np.random.default_rng(0).uniform(-8, 8, size=(50, 3)).astype(np.float32)  # some beyond the clip
    ref, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    with torch.no_grad():
        ours = policy(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    plain = export_sb3_policy(model)
    with torch.no_grad():
        assert not np.allclose(plain(torch.as_tensor(obs)).numpy(), ref, atol=1e-3)
    policy.save(tmp_path / "p")
    loaded, _ = ExpertPolicy.load(tmp_path / "p")
    np.testing.assert_allclose(loaded(torch.as_tensor(obs)).detach().numpy(), ours)
    with pytest.raises(InputError):
        ExpertPolicy([3, 4, 1], "relu", "clip_box", [-2.0], [2.0], {"mean": [0.0], "var": [1.0], "clip": 1,
                                                                    "eps": 0})


def test_normalize_preset_needs_ppo(tmp_path):
    """VecNormalize is wired into PPO only; another algorithm with ``normalize`` is refused before training, not
    exported without its statistics."""
    from mbirl.experts.train import ExpertPreset, ExpertRunConfig, train_expert

    with pytest.raises(InputError) as excinfo:
        train_expert(ExpertRunConfig("Pendulum-v1", steps=10), tmp_path / "e",
                     preset=ExpertPreset("sac", 10, normalize=True))
    assert "normalize" in str(excinfo.value)
    assert not (tmp_path / "e").exists()


def test_swimmer_preset_normalises_observations_not_rewards():
    """The RL zoo's Swimmer PPO (γ = 0.9999) normalises observations only: with rewards normalised too its return
    is a different quantity; the VecNormalize built from the preset must say so."""
    from mbirl.experts.train import EXPERT_PRESETS, _make_model

    preset = EXPERT_PRESETS["Swimmer-v5"]
    model = _make_model("Swimmer-v5", preset, seed=0)
    assert (model.gamma, model.env.norm_obs, model.env.norm_reward) == (0.9999, True, False)
    assert model.env.gamma == 0.9999  # the return the (unused) reward statistics would discount
    sac = _make_model("InvertedPendulum-v5", EXPERT_PRESETS["InvertedPendulum-v5"], seed=0)
    assert type(sac).__name__ == "SAC"
    for env_id in ("HalfCheetah-v5", "Walker2d-v5", "Ant-v5"):
        assert EXPERT_PRESETS[env_id].algo == "td3"
        assert EXPERT_PRESETS[env_id].kwargs == {"learning_starts": 10_000, "noise_std": 0.1}


def test_demos_carry_expert_and_random_returns(tmp_path):
    policy = ExpertPolicy([4, 8, 2], "tanh", "argmax")
    meta = generate_expert_demos("CartPole-v1", policy, 2, tmp_path / "d.npz", seed=3)
    trajs, saved = load_trajectories(tmp_path / "d.npz")
    assert len(trajs) == 2 and saved["env_id"] == "CartPole-v1"
    assert saved["expert_mean_return"] == pytest.approx(np.mean([t.rews.sum() for t in trajs]))
    assert saved["random_mean_return"] == meta["random_mean_return"] > 0
    assert trajs[0].acts.dtype.kind in "iu"


def test_shipped_demo_files_are_small_and_complete():
    from pathlib import Path

    files = sorted(Path("data/demos").glob("*.npz"))
    assert {f.stem for f in files} >= {"Pendulum-v1", "CartPole-v1", "InvertedPendulum-v5", "Hopper-v5"}
    for f in files:
        assert f.stat().st_size <= 5 * 1024 * 1024
        d = demo_stats(f)
        assert d.expert_return > d.random_return
        assert "command" in d.meta
    # the issues' bars for the experts
    for name, bar in (("Hopper-v5", 2500), ("HalfCheetah-v5", 5000), ("Swimmer-v5", 150)):
        assert demo_stats(f"data/demos/{name}.npz").expert_return >= bar, name


def test_run_episodes_and_normalisation():
    env = make_env("Pendulum-v1")
    res = run_episodes(env, random_policy(env, 0), 2, seed=0)
    assert res.returns.shape == (2,) and len(res.trajectories[0]) == 200
    assert normalized_return(-100.0, -100.0, -1000.0) == 1.0
    assert normalized_return(-1000.0, -100.0, -1000.0) == 0.0


def test_bad_expert_inputs(tmp_path):
    with pytest.raises(InputError):
        make_env("NoSuchEnv-v0")
    with pytest.raises(InputError):
        ExpertPolicy.load(tmp_path / "missing")
    policy = ExpertPolicy([3, 4, 1], "relu", "tanh_box", [-2.0], [2.0])
    with pytest.raises(InputError):
        generate_expert_demos("Pendulum-v1", policy, 1, tmp_path / "d.txt")
    with pytest.raises(InputError):
        ExpertPolicy([3, 4, 1], "gelu", "tanh_box")


def test_expert_train_is_a_run_directory_that_is_never_overwritten_silently(tmp_path, capsys):
    """``mbirl expert train``: options from ``--config``; config.json + metrics; a second run into the same
    directory is refused (SB3 cannot resume) unless ``--overwrite``."""
    import json

    from mbirl.cli import main

    def cli(*args: str) -> int:
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        return int(exc.value.code or 0)

    cfg = tmp_path / "expert.yaml"
    cfg.write_text("env: Pendulum-v1\nsteps: 200\neval_every: 10000\neval_episodes: 1\nseed: 4\n")
    out = tmp_path / "e"
    assert cli("expert", "train", "--config", str(cfg), "--seed", "5", "--out", str(out), "--no-progress") == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved == {"env": "Pendulum-v1", "seed": 5, "steps": 200, "max_minutes": None, "eval_every": 10_000,
                     "eval_episodes": 1, "algo": None, "device": "cpu"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["env_steps"] == 200 and metrics["seed"] == 5
    assert (out / "expert.json").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert cli("expert", "train", "--config", str(cfg), "--out", str(out), "--no-progress") == 2
    assert "already holds" in capsys.readouterr().err and json.loads((out / "config.json").read_text()) == saved
    assert cli("expert", "train", "--config", str(cfg), "--out", str(out), "--no-progress", "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 4
    assert cli("expert", "train", "--out", str(tmp_path / "x")) == 2  # no environment anywhere
    assert "missing required option(s) env" in capsys.readouterr().err
