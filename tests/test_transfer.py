"""The transfer tasks (mbirl.envs.transfer) and the transfer protocol (mbirl.experiments.transfer)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import imageio.v2 as imageio
import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

from mbirl.data.demos import save_trajectories  # noqa: E402
from mbirl.envs.transfer import (  # noqa: E402
    ANT_FRONT_LEGS,
    ANT_LEG_SCALE,
    MAZE_GOAL,
    MAZE_MAPS,
    TRANSFER_ENVS,
    disabled_ant_xml,
    maze_true_reward,
    maze_waypoint_policy,
)
from mbirl.errors import InputError  # noqa: E402
from mbirl.experts.rollout import make_env, random_policy, run_episodes  # noqa: E402
from mbirl.rewards.epic import TRUE_REWARDS  # noqa: E402


@pytest.mark.parametrize("env_id", sorted(TRANSFER_ENVS))
def test_registered_envs_build_and_step(env_id: str) -> None:
    env = make_env(env_id)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs.astype(env.observation_space.dtype))
    obs2, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs2.shape == obs.shape and np.isfinite(reward)
    env.close()


def test_maze_wall_moves_between_source_and_target() -> None:
    source, target = make_env("ShiftingMazeLeft-v0").unwrapped, make_env("ShiftingMazeRight-v0").unwrapped
    assert source.maze_map == MAZE_MAPS["left"] and target.maze_map == MAZE_MAPS["right"]
    left_gap, right_gap = np.array([-1.0, 0.0]), np.array([1.0, 0.0])
    assert source.is_free(left_gap) and not source.is_free(right_gap)
    assert target.is_free(right_gap) and not target.is_free(left_gap)
    # the same start and goal in both
    for env in (source, target):
        assert np.allclose(env.goal, MAZE_GOAL)
        assert env.is_free(np.array([0.0, -1.0])) and env.is_free(np.array(MAZE_GOAL))


def test_maze_physics_blocks_the_closed_gap() -> None:
    """Going through the left gap reaches the goal in the source maze and is stopped by the wall in the target."""
    left = maze_waypoint_policy("left")
    src = run_episodes(make_env("ShiftingMazeLeft-v0"), left, 2, seed=0).returns
    tgt = run_episodes(make_env("ShiftingMazeRight-v0"), left, 2, seed=0).returns
    right = run_episodes(make_env("ShiftingMazeRight-v0"), maze_waypoint_policy("right"), 2, seed=0).returns
    assert src.min() > 60 and right.min() > 60 and tgt.max() < 25


def test_maze_true_reward_matches_the_environment() -> None:
    env = make_env("ShiftingMazeRight-v0")
    obs, _ = env.reset(seed=3)
    act_fn = random_policy(env, 3)
    for _ in range(30):
        a = act_fn(obs)
        nxt, r, *_ = env.step(a)
        for fn in (maze_true_reward, TRUE_REWARDS["ShiftingMazeLeft-v0"], TRUE_REWARDS["ShiftingMazeRight-v0"]):
            assert np.isclose(r, fn(obs[None], np.asarray(a)[None], nxt[None])[0])
        obs = nxt
    assert maze_true_reward(np.zeros((1, 4)), np.zeros((1, 2)), np.array([[*MAZE_GOAL, 0.0, 0.0]]))[0] == 1.0


def test_disabled_ant_front_legs_shrunk() -> None:
    env = make_env("DisabledAnt-v5").unwrapped
    full = make_env("TransferAnt-v5").unwrapped
    import mujoco

    def length(model: object, geom: str) -> float:
        return float(model.geom_size[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom)][1])  # type: ignore

    for geom in ("left_ankle_geom", "right_ankle_geom", "left_leg_geom", "right_leg_geom"):  # the front legs
        assert np.isclose(length(env.model, geom), ANT_LEG_SCALE * length(full.model, geom))
    for geom in ("third_ankle_geom", "fourth_ankle_geom", "aux_1_geom"):  # back legs and hips unchanged
        assert np.isclose(length(env.model, geom), length(full.model, geom))
    assert env.observation_space.shape == full.observation_space.shape == (27,)
    root = ET.fromstring(disabled_ant_xml())
    names = {b.get("name") for b in root.iter("body")}
    assert set(ANT_FRONT_LEGS) <= names
    with pytest.raises(InputError):
        disabled_ant_xml(scale=0.0)


@pytest.fixture(scope="module")
def maze_demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Demonstrations of the scripted controller on the source maze (the protocol's own expert is SAC)."""
    path = tmp_path_factory.mktemp("demos") / "maze.npz"
    env = make_env("ShiftingMazeLeft-v0")
    demos = run_episodes(env, maze_waypoint_policy("left"), 3, seed=0)
    rand = run_episodes(env, random_policy(env, 1), 5, seed=100)
    save_trajectories(path, demos.trajectories, {"env_id": "ShiftingMazeLeft-v0", "expert_mean_return":
                                                 demos.mean_return, "random_mean_return": rand.mean_return})
    return str(path)


def _transfer(out: str, demos: str, rows: str, *extra: str) -> tuple[list[str], dict]:
    from typer.testing import CliRunner

    from mbirl.cli import app

    args = ["transfer", "run", "--task", "maze", "--out", out, "--demos", demos, "--irl-steps", "300",
            "--rl-steps", "150", "--eval-episodes", "1", "--eval-every", "150", "--random-episodes", "3",
            "--rows", rows, "--no-progress", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return args, json.loads(open(f"{out}/metrics.json").read())


def test_transfer_run_end_to_end(maze_demos: str, tmp_path: object) -> None:
    """MAIRL's row (with the true-reward and random rows, which always run) in a minimal budget; then resumed."""
    from typer.testing import CliRunner

    from mbirl.cli import app

    out = f"{tmp_path}/maze"
    args, metrics = _transfer(out, maze_demos, "mairl")
    assert set(metrics["normalized_return"]) == {"mairl", "true_reward", "random"}
    assert metrics["normalized_return"]["true_reward"] == pytest.approx(1.0)
    assert metrics["normalized_return"]["random"] == pytest.approx(0.0)
    assert metrics["mean_return"]["mairl"] == pytest.approx(
        json.loads(open(f"{out}/target/mairl/metrics.json").read())["mean_return"])
    reward = json.loads(open(f"{out}/rewards/mairl.json").read())
    assert reward["term"] == "g" and reward["spec"]["kwargs"]["state_only"] is True
    assert (tmp_path / "maze" / "figures" / "maze_paths.png").exists()  # type: ignore[operator]
    assert metrics["videos"] == {"mairl": "videos/mairl.mp4", "true_reward": "videos/true_reward.mp4"}
    for video in metrics["videos"].values():
        frames = imageio.mimread(f"{out}/{video}", memtest=False)
        assert len(frames) == 100 and frames[0].ndim == 3 and np.std(frames[50]) > 10  # a full episode, not blank
    assert "| `mairl` |" in open(f"{out}/summary.md").read()
    # a finished run resumes to the same table without training anything again
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads(open(f"{out}/metrics.json").read())["normalized_return"] == metrics["normalized_return"]
    # and an existing run is not overwritten without --resume
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "--resume" in str(refused.exception)


@pytest.mark.slow
def test_transfer_run_every_row_in_parallel(maze_demos: str, tmp_path: object) -> None:
    """Every row (AIRL and GAIL with SB3 PPO, whose smallest rollout is 2048 steps), stages in two processes."""
    out = f"{tmp_path}/maze"
    _, metrics = _transfer(out, maze_demos, ",".join(["mairl", "airl", "gail_policy", "true_reward", "random"]),
                           "--workers", "2")
    assert set(metrics["normalized_return"]) == {"mairl", "airl", "gail_policy", "true_reward", "random"}
    for row in ("mairl", "airl"):
        reward = json.loads(open(f"{out}/rewards/{row}.json").read())
        assert reward["term"] == "g" and reward["spec"]["kwargs"]["state_only"] is True
    assert np.isfinite(metrics["mean_return"]["gail_policy"])


@pytest.mark.slow
def test_transfer_run_killed_in_its_stages_resumes_to_the_uninterrupted_result(maze_demos: str, tmp_path) -> None:
    """``mbirl transfer run`` SIGKILLed while MAIRL learns the reward, then while SAC trains on it, and resumed:
    the same metrics as an uninterrupted run (each stage resumes from its checkpoint)."""
    import signal
    import subprocess
    import sys
    import time

    from test_reliability import _untimed

    def command(out: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "mbirl", "transfer", "run", "--task", "maze", "--out", out, "--demos",
                maze_demos, "--irl-steps", "600", "--rl-steps", "300", "--eval-episodes", "1", "--eval-every", "150",
                "--random-episodes", "3", "--rows", "mairl", "--no-videos", "--no-progress", *extra]

    ref = subprocess.run(command(f"{tmp_path}/ref"), capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    waits = [lambda: len((run / "irl" / "mairl" / "metrics.jsonl").read_text().splitlines()) >= 2
             if (run / "irl" / "mairl" / "metrics.jsonl").exists() else False,
             lambda: (run / "target" / "mairl" / "config.json").exists()]
    landed = 0
    for k, ready in enumerate(waits):
        proc = subprocess.Popen(command(str(run), *(["--resume"] if k else [])), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 600
        while proc.poll() is None and not ready() and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        landed += proc.returncode == -signal.SIGKILL and not (run / "metrics.json").exists()
    assert landed == 2
    done = subprocess.run(command(str(run), "--resume"), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    for part in ("metrics.json", "irl/mairl/metrics.json", "target/mairl/metrics.json"):
        expected = (tmp_path / "ref" / part).read_text().replace(str(tmp_path / "ref"), str(run))
        assert _untimed(json.loads((run / part).read_text())) == _untimed(json.loads(expected)), part


def test_sac_stage_interrupted_continues_from_its_checkpoint(tmp_path, monkeypatch) -> None:
    """A SAC stage on the target maze interrupted at its second evaluation continues from the checkpoint written
    after its first (replay buffer, networks, optimisers, environment, RNGs) to the same metrics as an uninterrupted
    stage: it evaluates only what was left, where a restart would evaluate everything again."""
    from mbirl.experiments import transfer
    from test_reliability import _untimed

    cfg = transfer.SACStageConfig(task="maze", env="ShiftingMazeRight-v0", steps=300, eval_every=100,
                                  eval_episodes=1)
    sac = {"learning_starts": 50, "batch_size": 32}
    reference = transfer.train_sac_stage(cfg, tmp_path / "ref", sac_kwargs=sac, progress=False)
    real, calls = transfer._evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(transfer, "_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        transfer.train_sac_stage(cfg, tmp_path / "run", sac_kwargs=sac, progress=False)
    assert not (tmp_path / "run" / "metrics.json").exists()
    calls.clear()
    monkeypatch.setattr(transfer, "_evaluate", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = transfer.train_sac_stage(cfg, tmp_path / "run", sac_kwargs=sac, progress=False)
    assert len(calls) == 2  # the evaluation at 200 steps and the final one: 100 came from the checkpoint
    assert _untimed(resumed) == _untimed(reference)
    assert [e["env_steps"] for e in resumed["curve"]] == [100, 200]
    lines = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [100, 200]
