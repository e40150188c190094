"""Any gymnasium environment: an expert for one without a preset (``--algo``) defined outside the package, and
``mairl eval`` writing its per-episode returns to a JSON file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from imitation_helpers import cli
from mbirl.algorithms.bc import BCConfig
from mbirl.errors import InputError
from mbirl.experiments.imitation import ImitationRunConfig, run_imitation
from mbirl.experts.train import ExpertRunConfig

USER_ENV = "user_envs:PointMass-v0"


def test_expert_for_a_users_environment_without_a_preset(tmp_path, capsys):
    out = tmp_path / "expert"
    assert cli("expert", "train", "--env", USER_ENV, "--algo", "td3", "--steps", "120", "--eval-every", "120",
               "--out", str(out), "--no-progress") == 0
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["algo"] == "td3" and meta["env_steps"] == 120 and "--algo td3" in meta["command"]
    assert (out / "expert.json").is_file() and (out / "run.json").is_file()
    assert cli("expert", "demos", "--env", USER_ENV, "--n", "2", "--expert", str(out / "expert"),
               "--out", str(tmp_path / "demos.npz")) == 0
    data = np.load(tmp_path / "demos.npz", allow_pickle=False)
    assert json.loads(str(data["meta_json"]))["env_id"] == USER_ENV
    capsys.readouterr()
    # no preset and no --algo; SAC on discrete actions: one-line errors that say what to do
    assert cli("expert", "train", "--env", USER_ENV, "--out", str(tmp_path / "x")) == 2
    assert "--algo sac|td3|ppo" in capsys.readouterr().err
    assert cli("expert", "train", "--env", "CartPole-v1", "--algo", "sac", "--out", str(tmp_path / "y")) == 2
    err = capsys.readouterr().err
    assert "use --algo ppo" in err and err.count("\n") == 1


def test_expert_for_an_environment_whose_state_cannot_be_checkpointed_trains_to_the_end(tmp_path):
    out = tmp_path / "expert"
    with pytest.warns(UserWarning, match="cannot be resumed"):
        assert cli("expert", "train", "--env", "user_envs:Walker-v0", "--algo", "td3", "--steps", "90",
                   "--eval-every", "60", "--out", str(out), "--no-progress") == 0
    assert json.loads((out / "metrics.json").read_text())["env_steps"] == 90 and (out / "expert.json").is_file()
    assert not (out / "checkpoints" / "last.json").exists()


def test_expert_training_of_a_classic_environment_is_checkpointed(tmp_path):
    # Pendulum has no state until its first reset: whether a state can be captured is only known once training runs
    out = tmp_path / "expert"
    assert cli("expert", "train", "--env", "Pendulum-v1", "--algo", "sac", "--steps", "80", "--eval-every", "40",
               "--out", str(out), "--no-progress") == 0
    assert (out / "checkpoints" / "last.json").is_file()


def test_algo_choices_are_validated():
    assert ExpertRunConfig(env="Pendulum-v1", algo="sac").preset().kwargs  # the preset when it is the same algo
    assert ExpertRunConfig(env="Pendulum-v1", algo="td3").preset().kwargs == {}  # SB3 defaults otherwise
    try:
        ExpertRunConfig(env="Pendulum-v1", algo="dqn")
    except InputError as exc:
        assert "unknown algorithm 'dqn'" in str(exc)
    else:
        raise AssertionError("dqn accepted")


def test_mairl_eval_writes_per_episode_returns(tmp_path):
    cfg = ImitationRunConfig(demos="data/demos/CartPole-v1.npz", algo="bc", bc=BCConfig(max_epochs=1, batch_size=256),
                             eval_episodes=1)
    run_imitation(cfg, tmp_path / "bc", progress=False)
    assert cli("mairl", "eval", "--run-dir", str(tmp_path / "bc"), "--episodes", "3", "--seed", "5") == 0
    result = json.loads((tmp_path / "bc" / "eval.json").read_text())
    assert len(result["returns"]) == 3 and result["seed"] == 5
    assert result["mean_return"] == np.mean(result["returns"])
    assert cli("il", "eval", "--run-dir", str(tmp_path / "bc"), "--episodes", "2", "--out",
               str(tmp_path / "e.json")) == 0
    assert len(json.loads((tmp_path / "e.json").read_text())["returns"]) == 2


def test_video_of_an_environment_that_cannot_render_fails_in_one_line_with_the_evaluation_saved(tmp_path, capsys):
    import user_envs  # noqa: F401 (registers PointMass-v0, whose constructor takes no render_mode)
    from mbirl.data.demos import save_trajectories
    from mbirl.experts.rollout import make_env, random_policy, run_episodes

    env = make_env("PointMass-v0")
    expert = run_episodes(env, lambda o: np.clip([-2.0 * o[0] - 3.0 * o[1]], -1, 1).astype(np.float32), 3, seed=0)
    rand = run_episodes(env, random_policy(env, 1), 3, seed=100)
    save_trajectories(tmp_path / "demos.npz", expert.trajectories,
                      {"env_id": "PointMass-v0", "expert_mean_return": expert.mean_return,
                       "random_mean_return": rand.mean_return})
    run_imitation(ImitationRunConfig(demos=str(tmp_path / "demos.npz"), algo="bc", eval_episodes=1,
                                     bc=BCConfig(max_epochs=2, batch_size=64)), tmp_path / "bc", progress=False)
    capsys.readouterr()
    assert cli("il", "eval", "--run-dir", str(tmp_path / "bc"), "--episodes", "2", "--video",
               str(tmp_path / "v.mp4")) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbirl: error: ") and "cannot render" in err and err.count("\n") == 1
    assert len(json.loads((tmp_path / "bc" / "eval.json").read_text())["returns"]) == 2


def test_mairl_eval_of_a_run_on_a_users_environment_takes_env_from_the_command_line(tmp_path, capsys):
    # the run's files name user_envs:PointMass-v0; a file may not make mbirl import a module, the command line may
    import user_envs
    from mbirl.data.demos import save_trajectories
    from mbirl.experts.rollout import make_env, random_policy, run_episodes

    env = make_env("PointMass-v0")
    expert = run_episodes(env, lambda o: np.clip([-2.0 * o[0] - 3.0 * o[1]], -1, 1).astype(np.float32), 2, seed=0)
    rand = run_episodes(env, random_policy(env, 1), 2, seed=100)
    save_trajectories(tmp_path / "demos.npz", expert.trajectories,
                      {"env_id": USER_ENV, "expert_mean_return": expert.mean_return,
                       "random_mean_return": rand.mean_return})
    run = tmp_path / "bc"
    run_imitation(ImitationRunConfig(demos=str(tmp_path / "demos.npz"), env=USER_ENV, algo="bc", eval_episodes=1,
                                     bc=BCConfig(max_epochs=2, batch_size=64)), run, progress=False)
    capsys.readouterr()
    assert cli("mairl", "eval", "--run-dir", str(run), "--episodes", "1") == 2
    err = capsys.readouterr().err
    assert "not a plain registered environment id" in err and "--env" in err and err.count("\n") == 1
    assert cli("mairl", "eval", "--run-dir", str(run), "--episodes", "2", "--env", USER_ENV) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["env_id"] == USER_ENV and len(result["returns"]) == 2
    # another id than the recorded module:Env would need the run's module imported to compare: refused
    assert cli("mairl", "eval", "--run-dir", str(run), "--episodes", "1", "--env", "PointMass-v0") == 2
    assert "not a plain registered environment id" in capsys.readouterr().err
    # a run recorded with a plain id: another environment with the same spaces is accepted, one whose spaces
    # differ makes no sense and is refused
    assert "PointMass-v0" in user_envs.gym.registry
    save_trajectories(tmp_path / "plain.npz", expert.trajectories,
                      {"env_id": "PointMass-v0", "expert_mean_return": expert.mean_return,
                       "random_mean_return": rand.mean_return})
    plain = tmp_path / "plain"
    shutil.copytree(run, plain)
    config = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**config, "env": "", "demos": str(tmp_path / "plain.npz")}))
    assert cli("mairl", "eval", "--run-dir", str(plain), "--episodes", "1", "--env", USER_ENV) == 0
    assert json.loads((plain / "eval.json").read_text())["env_id"] == USER_ENV
    capsys.readouterr()
    assert cli("mairl", "eval", "--run-dir", str(plain), "--episodes", "1", "--env", "user_envs:Walker-v0") == 2
    err = capsys.readouterr().err
    assert "observation space" in err and "user_envs:Walker-v0" in err and err.count("\n") == 1
