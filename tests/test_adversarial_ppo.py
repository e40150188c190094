"""GAIL and AIRL with a PPO generator in the imitation harness: the presets and configuration, the rewards the
generator maximises (AIRL's is the discriminator's logit ``f - log pi``) and their normalisation, a run's metrics
and log, exact resume after an interruption, and ``mbirl il train --algo gail`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imitation_helpers import cli as _cli
from imitation_helpers import interrupt_after
from imitation_helpers import rows as _rows
from imitation_helpers import untimed as _untimed
from mbirl.algorithms.adversarial_ppo import (
    DEFAULT_PPO,
    PPO_PRESETS,
    AdversarialPPO,
    AdversarialPPOConfig,
    RunningNorm,
    build_adversarial_ppo,
)
from mbirl.errors import InputError
from mbirl.experiments.imitation import ALGORITHMS, ImitationRunConfig, run_imitation
from mbirl.experts.demos import demo_stats
from mbirl.experts.train import EXPERT_PRESETS
from mbirl.reporting.checkpoint import load_checkpoint
from mbirl.reporting.runs import checkpoint_stem

CARTPOLE, PENDULUM = "data/demos/CartPole-v1.npz", "data/demos/Pendulum-v1.npz"
# tiny rollouts (2 x 48 steps: Pendulum's 200-step episodes end mid-rollout) and cheap updates
TINY = AdversarialPPOConfig(n_envs=2, n_steps=48, batch_size=48, n_epochs=2, demo_batch_size=64, disc_updates=2)


def test_presets_and_config():
    assert {"gail", "airl"} <= set(ALGORITHMS.names)
    kwargs, n_envs, normalize = AdversarialPPOConfig().resolve("Pendulum-v1")
    # rl-baselines3-zoo's tuned PPO for Pendulum-v1
    assert (n_envs, normalize) == (4, False)
    assert kwargs == {"n_steps": 1024, "gae_lambda": 0.95, "gamma": 0.9, "n_epochs": 10, "ent_coef": 0.0,
                      "learning_rate": 1e-3, "clip_range": 0.2, "use_sde": True, "sde_sample_freq": 4}
    # CartPole's is the expert's (the zoo's) preset, not a copy; set fields override a preset
    assert PPO_PRESETS["CartPole-v1"] is EXPERT_PRESETS["CartPole-v1"]
    kwargs, n_envs, _ = AdversarialPPOConfig(n_envs=2, gamma=0.95).resolve("CartPole-v1")
    assert n_envs == 2 and kwargs["gamma"] == 0.95 and kwargs["n_steps"] == 32 and kwargs["batch_size"] == 256
    assert PPO_PRESETS["InvertedPendulum-v5"].normalize and PPO_PRESETS["Hopper-v5"].normalize
    kwargs, n_envs, _ = AdversarialPPOConfig().resolve("Acrobot-v1")
    assert n_envs == DEFAULT_PPO.n_envs == 8 and kwargs["n_steps"] == 256
    for bad in ({"n_steps": 0}, {"disc_lr": 0.0}, {"gamma": 1.5}, {"ent_coef": -1.0}, {"sde_sample_freq": 0},
                {"disc_hidden": (0,)}, {"disc_updates": -1}, {"reward_norm": "centre"}):
        with pytest.raises(InputError):
            AdversarialPPOConfig(**bad)
    # discriminator updates: imitation's 4 per round, or its rate of one per 512 steps on longer rollouts
    pendulum = build_adversarial_ppo(AdversarialPPOConfig(), demo_stats(PENDULUM), discriminator="gail", seed=0)
    assert (pendulum.rollout_size, pendulum.disc_updates, pendulum.demo_batch_size) == (4096, 8, 4096)
    cartpole = build_adversarial_ppo(AdversarialPPOConfig(), demo_stats(CARTPOLE), discriminator="gail", seed=0)
    assert (cartpole.rollout_size, cartpole.disc_updates) == (256, 4)
    with pytest.raises(InputError, match="state-only"):
        build_adversarial_ppo(AdversarialPPOConfig(state_only=True), demo_stats(PENDULUM), discriminator="gail",
                              seed=0)
    with pytest.raises(InputError, match="gSDE"):
        build_adversarial_ppo(AdversarialPPOConfig(use_sde=True), demo_stats(CARTPOLE), discriminator="gail",
                              seed=0)


def test_running_norm_is_the_exact_running_statistics():
    norm, rng = RunningNorm(), np.random.default_rng(0)
    seen = []
    for n in (1, 4, 7, 4):
        x = rng.normal(3.0, 2.0, n)
        norm.update(x)
        seen.append(x)
    stream = np.concatenate(seen)
    assert norm.count == len(stream)
    np.testing.assert_allclose([norm.mean, norm.var], [stream.mean(), stream.var()], rtol=1e-12)
    np.testing.assert_allclose(norm(stream), (stream - stream.mean()) / np.sqrt(stream.var() + RunningNorm.eps))
    np.testing.assert_allclose(norm(stream, center=False), stream / np.sqrt(stream.var() + RunningNorm.eps))


def _demo_batch(learner: AdversarialPPO, n: int = 64):
    d = learner.demos
    idx = np.arange(0, len(d.obs), len(d.obs) // n)[:n]
    return d.obs[idx], d.acts[idx], d.next_obs[idx], d.dones[idx]


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_airl_reward_is_the_discriminators_logit(weight):
    """AIRL's reward is ``log D - log(1 - D) = f(s, a, s') - log pi(a | s)`` with SB3's log-density of the action
    (``airl_entropy_weight = 0``: ``f`` alone); PPO receives it standardised by its running statistics."""
    learner = build_adversarial_ppo(AdversarialPPOConfig(airl_entropy_weight=weight, n_envs=1, n_steps=16),
                                    demo_stats(PENDULUM), discriminator="airl", seed=0)
    obs, acts, next_obs, done = _demo_batch(learner)
    done = done.copy()
    done[::7] = 1.0  # terminal transitions drop the potential of s'
    with torch.no_grad():
        _, log_pi, _ = learner.model.policy.evaluate_actions(torch.as_tensor(obs), torch.as_tensor(acts))
        o, a, o2, dn = (torch.as_tensor(v) for v in (obs, acts, next_obs, done))
        disc = learner.disc
        f = disc.g(o, a) + learner.model.gamma * (1 - dn) * disc.h(o2) - disc.h(o)
        logit = disc.logits(o, a, o2, dn, log_pi)
        d = torch.sigmoid(logit.double())
    reward = learner.learned_reward(obs, acts, next_obs, done)
    np.testing.assert_allclose(reward, (f - weight * log_pi).numpy(), rtol=1e-5, atol=1e-5)
    assert learner.model.gamma == 0.9 and disc.gamma == 0.9  # the shaping discount is PPO's
    if weight == 1.0:
        np.testing.assert_allclose(reward, (torch.log(d) - torch.log1p(-d)).numpy(), rtol=1e-4, atol=1e-4)
    # PPO receives it divided by the running standard deviation of every learned reward so far (the sign kept)
    raw, given = learner.rewards(obs, acts, next_obs, done)
    raw2, given2 = learner.rewards(obs[:5], acts[:5], next_obs[:5], done[:5])
    stream = np.concatenate([raw, raw2])
    np.testing.assert_allclose(raw, reward)
    np.testing.assert_allclose(given2, raw2 / np.sqrt(stream.var() + RunningNorm.eps), rtol=1e-9)


def test_gail_reward_is_minus_log_one_minus_d():
    learner = build_adversarial_ppo(AdversarialPPOConfig(n_envs=1, n_steps=16), demo_stats(CARTPOLE),
                                    discriminator="gail", seed=0)
    obs, acts, next_obs, done = _demo_batch(learner)
    with torch.no_grad():
        one_hot = torch.nn.functional.one_hot(torch.as_tensor(acts), 2).float()
        logit = learner.disc.logits(torch.as_tensor(obs), one_hot, torch.as_tensor(next_obs), torch.as_tensor(done),
                                    torch.zeros(len(obs)))
        d = torch.sigmoid(logit.double())
    np.testing.assert_allclose(learner.learned_reward(obs, acts, next_obs, done), (-torch.log1p(-d)).numpy(),
                               rtol=1e-5)


def test_run_logs_the_harness_schema(tmp_path):
    cfg = ImitationRunConfig(demos=CARTPOLE, algo="gail", seed=1, env_steps=400, eval_every=200, eval_episodes=2,
                             ppo=TINY)
    m = run_imitation(cfg, tmp_path / "r", progress=False)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == m
    assert m["algo"] == "gail" and m["discriminator"] == "gail" and m["generator"] == "ppo"
    assert (m["rollout_steps"], m["demo_batch_size"], m["disc_updates"]) == (96, 64, 2)
    assert m["ppo"]["preset"] == "CartPole-v1"
    # the hyper-parameters the generator ran with: set fields, the preset's others, SB3's defaults for the rest
    assert (m["ppo"]["n_steps"], m["ppo"]["gamma"], m["ppo"]["vf_coef"], m["ppo"]["learning_rate"]) == \
        (48, 0.98, 0.5, 1e-3)
    # every iteration is one rollout of 96 steps; evaluations before training, at 200 and 400 (reached at 288, 480)
    assert m["env_steps"] == 480 and m["iterations"] == 5
    assert [e["env_steps"] for e in m["eval"]] == [0, 288, 480]
    assert m["seconds_per_1k_env_steps"] > 0 and m["final_normalized_return"] == m["eval"][-1]["normalized_return"]
    rows = _rows(tmp_path / "r")
    assert [r["step"] for r in rows] == [0, 96, 192, 288, 384, 480]
    for key in ("losses/discriminator", "losses/ppo_value", "charts/learned_reward", "charts/true_reward",
                "charts/disc_expert_acc", "charts/episode_return"):
        assert key in rows[1], key
    assert rows[1]["charts/true_reward"] == 1.0  # CartPole pays 1 per step: the true reward, not the learned one


def _assert_identical(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_identical(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_identical(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize(("algo", "demos", "extra"), [
    ("airl", PENDULUM, {}),  # gSDE resampled every 4 steps (the preset's), episodes cut mid-rollout
    # terminations, running observation statistics, imitation's standardised reward
    ("gail", CARTPOLE, {"normalize_obs": True, "reward_norm": "standardize"}),
])
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, algo, demos, extra):
    """Interrupted after 3 rounds and resumed from the checkpoint, a run ends exactly where the uninterrupted one
    does: metrics, log rows, networks, optimisers and normalisers."""
    import dataclasses

    cfg = ImitationRunConfig(demos=demos, algo=algo, seed=2, env_steps=480, eval_every=200, eval_episodes=1,
                             checkpoint_every=1, ppo=dataclasses.replace(TINY, **extra))
    full = run_imitation(cfg, tmp_path / "full", progress=False)
    with monkeypatch.context() as patch:
        interrupt_after(patch, AdversarialPPO, 3)
        with pytest.raises(KeyboardInterrupt):
            run_imitation(cfg, tmp_path / "split", progress=False)
    # something else in the process drawing from the global generators changes nothing
    torch.rand(7)
    np.random.rand(3)  # noqa: NPY002 (the legacy global generator, which SB3 uses)
    resumed = run_imitation(cfg, tmp_path / "split", resume=True, progress=False)
    assert _untimed(resumed) == _untimed(full)
    assert _rows(tmp_path / "split") == _rows(tmp_path / "full")
    a = load_checkpoint(checkpoint_stem(tmp_path / "full"))["trainer"]
    b = load_checkpoint(checkpoint_stem(tmp_path / "split"))["trainer"]
    for key in ("policy", "disc", "opt_policy", "opt_disc", "reward_stats", "obs_norm", "last_obs", "torch_rng",
                "numpy_global_rng", "rng", "envs", "episodes_started"):
        _assert_identical(b[key], a[key])
    assert (a["obs_norm"] is None) == (algo == "airl")


def test_cli_il_train_gail_end_to_end(tmp_path, capsys):
    yaml = tmp_path / "gail.yaml"
    yaml.write_text("eval_episodes: 1\nppo:\n  n_envs: 2\n  n_steps: 32\n  batch_size: 32\n  n_epochs: 1\n"
                    "  disc_updates: 1\n")
    run_dir = tmp_path / "r"
    assert _cli("il", "train", "--algo", "gail", "--demos", PENDULUM, "--config", str(yaml), "--env-steps", "128",
                "--eval-every", "64", "--run-dir", str(run_dir), "--no-progress") == 0
    assert "Pendulum-v1 gail seed 0: normalised return" in capsys.readouterr().out
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["algo"] == "gail" and m["env_steps"] == 128 and m["iterations"] == 2
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["algo"] == "gail" and saved["ppo"]["n_steps"] == 32 and saved["ppo"]["gamma"] is None
    assert _cli("il", "eval", "--run-dir", str(run_dir), "--episodes", "1") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["algo"] == "gail" and out["env_steps_trained"] == 128 and out["episodes"] == 1
