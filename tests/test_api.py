"""The public Python API: ``mbirl.load_run`` for every kind of run, the learned reward as a component (batch
evaluation, safetensors + JSON, a gymnasium wrapper an unmodified SB3 algorithm trains on) and run provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mbirl
from mbirl import InputError
from mbirl.algorithms.adversarial_ppo import AdversarialPPOConfig
from mbirl.algorithms.bc import BCConfig
from mbirl.algorithms.dac import DACConfig
from mbirl.algorithms.mairl import MAIRLConfig
from mbirl.experiments.imitation import ImitationRunConfig, run_imitation
from mbirl.rewards.learned import LearnedReward, LearnedRewardWrapper

PENDULUM, CARTPOLE = "data/demos/Pendulum-v1.npz", "data/demos/CartPole-v1.npz"
TINY_MAIRL = MAIRLConfig(warmup_steps=100, n_rollouts=2, horizon=5, batch_size=32, model_steps=2,
                         model_pretrain_steps=5, state_only=True)


def _transitions(env_id: str, n: int, seed: int = 0):
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = {"obs": [], "act": [], "next_obs": [], "done": []}
    for _ in range(n):
        a = env.action_space.sample()
        nxt, _, term, trunc, _ = env.step(a)
        for k, v in zip(out, (obs, a, nxt, float(term)), strict=True):
            out[k].append(v)
        obs = env.reset()[0] if term or trunc else nxt
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def mairl_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("api") / "mairl"
    cfg = ImitationRunConfig(demos=PENDULUM, algo="mairl", seed=1, env_steps=200, eval_every=200, eval_episodes=1,
                             mairl=TINY_MAIRL)
    run_imitation(cfg, run_dir, progress=False)
    return run_dir


def test_load_run_gives_config_metrics_policy_and_the_unshaped_reward(mairl_run):
    run = mbirl.load_run(mairl_run)
    assert isinstance(run, mbirl.ImitationRun)
    assert (run.algo, run.env_id, run.config.mairl.state_only) == ("mairl", "Pendulum-v1", True)
    assert run.metrics is not None and run.metrics["env_steps"] == run.env_steps >= 200
    obs = np.array([0.3, -0.9, 1.5], np.float32)
    np.testing.assert_array_equal(run.policy.act(obs), run.learner.act_deterministic(obs))
    assert run.policy.act(np.stack([obs, obs])).shape == (2, 1)
    # the default reward is the unshaped, state-only g(s); "f" is the shaped one the policy was trained on
    t = _transitions("Pendulum-v1", 16)
    disc = run.learner.disc
    s, a, s2, d = (torch.as_tensor(t[k], dtype=torch.float32) for k in ("obs", "act", "next_obs", "done"))
    assert run.reward.term == "g" and run.reward.state_only and not run.reward.shaped
    np.testing.assert_allclose(run.reward(t["obs"], t["act"], t["next_obs"], t["done"]),
                               disc.g(s, a).detach().double().numpy(), rtol=1e-6)
    a_clipped = a.clamp(-2.0, 2.0)
    np.testing.assert_allclose(run.reward.with_term("f")(t["obs"], t["act"], t["next_obs"], t["done"]),
                               disc.f(s, a_clipped, s2, d).detach().double().numpy(), rtol=1e-5, atol=1e-6)
    # a state-only reward ignores the action
    np.testing.assert_array_equal(run.reward(t["obs"], t["act"], t["next_obs"]),
                                  run.reward(t["obs"], -t["act"], t["next_obs"]))


def test_learned_reward_round_trips_through_safetensors_and_json(mairl_run, tmp_path):
    reward = LearnedReward.load(mairl_run, term="f")
    path = reward.save(tmp_path / "reward.json")
    assert json.loads(path.read_text())["format"] == "mbirl.learned_reward/v1"
    assert (tmp_path / "reward.safetensors").is_file()
    back = LearnedReward.load(path)
    t = _transitions("Pendulum-v1", 8, seed=3)
    np.testing.assert_array_equal(back(t["obs"], t["act"], t["next_obs"], t["done"]),
                                  reward(t["obs"], t["act"], t["next_obs"], t["done"]))
    assert back.term == "f" and back.shaped


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other"}),
                                     json.dumps({"format": "mbirl.learned_reward/v1", "spec": {"nope": 1}})])
def test_malformed_reward_files_are_one_line_input_errors(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(InputError) as exc:
        LearnedReward.load(path)
    assert "\n" not in str(exc.value)


def test_an_unmodified_sb3_algorithm_trains_on_the_wrapped_environment(mairl_run):
    from stable_baselines3 import SAC
    from stable_baselines3.common.env_checker import check_env

    run = mbirl.load_run(mairl_run)
    env = run.as_env_wrapper()
    assert isinstance(env, LearnedRewardWrapper)
    check_env(env, warn=False)
    obs, _ = env.reset(seed=0)
    a = env.action_space.sample()
    nxt, r, term, _, info = env.step(a)
    assert r == pytest.approx(float(run.reward(obs[None], a[None], nxt[None], [float(term)])[0]))
    assert "true_reward" in info and info["true_reward"] != pytest.approx(r)
    model = SAC("MlpPolicy", env, learning_starts=32, batch_size=32, train_freq=16, gradient_steps=1, seed=0,
                device="cpu", verbose=0)
    before = [p.detach().clone() for p in model.policy.actor.parameters()]
    model.learn(total_timesteps=64)
    after = list(model.policy.actor.parameters())
    assert model.num_timesteps == 64 and any(not torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_run_directory_records_provenance(mairl_run):
    info = json.loads((mairl_run / "run.json").read_text())
    assert info["mbirl_version"] == mbirl.__version__
    assert info["components"]["dynamics"].endswith("AttentionForwardModel") or "dynamics" in info["components"]
    assert info["components"]["discriminator"] == "mbirl.rewards.discriminator.AIRLDiscriminator"
    assert "command" in info and info["git"] is None or len(info["git"]["commit"]) == 40


@pytest.mark.parametrize("algo", ["gail", "dac", "bc"])
def test_load_run_of_every_baseline(tmp_path, algo):
    from mbirl.algorithms.dac import disc_value
    from mbirl.types import TransitionBatch

    cfg = ImitationRunConfig(demos=PENDULUM, algo=algo, seed=0, env_steps=96, eval_every=96, eval_episodes=1,
                             ppo=AdversarialPPOConfig(n_envs=2, n_steps=48, batch_size=48, n_epochs=1,
                                                      demo_batch_size=32, disc_updates=1),
                             dac=DACConfig(buffer_size=1000, learning_starts=50, batch_size=32),
                             bc=BCConfig(max_epochs=2, batch_size=64))
    run_imitation(cfg, tmp_path / algo, progress=False)
    run = mbirl.load_run(tmp_path / algo)
    obs = np.array([1.0, 0.0, 0.2], np.float32)
    np.testing.assert_array_equal(run.policy.act(obs), run.learner.act_deterministic(obs))
    if algo == "bc":
        assert run.reward is None
        with pytest.raises(InputError, match="no learned reward"):
            run.as_env_wrapper()
        return
    t = _transitions("Pendulum-v1", 12, seed=5)
    got = run.reward(t["obs"], t["act"], t["next_obs"], t["done"])
    learner = run.learner
    if algo == "gail":  # the generator's own reward, -log(1 - D)
        assert run.reward.term == "neg_log_1md"
        np.testing.assert_allclose(got, learner.learned_reward(t["obs"], t["act"], t["next_obs"], t["done"]),
                                   rtol=1e-6)
    else:  # DAC's reward of the same transitions as its replay buffer holds them
        z, a, z2, d = learner.transitions(t["obs"], learner.from_env_action(t["act"]), t["next_obs"], t["done"])
        batch = TransitionBatch(*(torch.as_tensor(x) for x in (z, a, z2, d)))
        want = disc_value(learner.disc, batch.obs, batch.act, batch.next_obs, batch.done).detach().numpy()
        np.testing.assert_allclose(got, want[: len(got)], rtol=1e-5, atol=1e-6)


def test_a_custom_cost_is_recorded_by_its_own_name_and_loads(tmp_path, placing_demos):
    from mbirl.costs import WeightedCost
    from mbirl.data.demos import save_keypoint_demos
    from mbirl.experiments.kuka_irl import MBIRLRunConfig, prepare_run, run_mbirl

    class MyCost(WeightedCost):
        """A user's own cost: the weighted cost under another name."""

    demos = tmp_path / "demos.npz"
    save_keypoint_demos(demos, placing_demos)
    cfg = MBIRLRunConfig(demos=str(demos), outer_iters=2)
    prep = prepare_run(cfg)
    prep.learner.cost = MyCost(prep.learner.cost.dim)
    from mbirl.algorithms.mbirl import MBIRL

    prep.learner = MBIRL(prep.learner.cost, prep.dynamics, prep.train, prep.test, cfg.trainer)
    metrics = run_mbirl(cfg, tmp_path / "run", prepared=prep, progress=False, figures=False)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["method"]
    assert recorded == metrics["method"] != "weighted" and recorded.endswith("MyCost")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["components"]["cost"].endswith("MyCost")
    with pytest.raises(InputError, match="cost="):
        mbirl.load_run(tmp_path / "run")
    run = mbirl.load_run(tmp_path / "run", cost=MyCost(prep.learner.cost.dim))
    assert isinstance(run, mbirl.MBIRLRun)
    torch.testing.assert_close(run.cost.state_dict(), prep.learner.cost.state_dict())
    plan = run.policy.act(placing_demos[3].start_q, placing_demos[3].goal)
    assert plan.shape == (placing_demos[3].horizon - 1, placing_demos[3].n_joints)
    with pytest.raises(InputError, match="trajectory cost"):
        run.as_env_wrapper()


def test_package_exports_and_version(capsys):
    from mbirl.cli import main

    for name in mbirl.__all__:
        assert getattr(mbirl, name) is not None
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code in (0, None) and capsys.readouterr().out.strip() == f"mbirl {mbirl.__version__}"
