"""Demonstrations from other libraries: each importer round-trips a file written by the library it targets (SB3's
rollout machinery, HuggingFace ``datasets`` in ``imitation``'s layout, ``minari``, ``h5py``), and rejects malformed
files with a one-line error."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from imitation_helpers import cli
from mbirl.data.demos import load_trajectories
from mbirl.data.interop import export_minari, import_demos, read_minari
from mbirl.errors import InputError

PENDULUM = "data/demos/Pendulum-v1.npz"


def _episodes(env_id: str, n: int, seed: int = 0):
    """``n`` seeded random episodes: lists of (obs (T+1, d), acts (T, ...), rews (T,), terminated)."""
    env = gym.make(env_id, max_episode_steps=30)
    env.action_space.seed(seed)
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        o, a, r = [obs], [], []
        while True:
            act = env.action_space.sample()
            obs, rew, term, trunc, _ = env.step(act)
            o.append(obs)
            a.append(act)
            r.append(rew)
            if term or trunc:
                break
        out.append((np.asarray(o, np.float32), np.asarray(a), np.asarray(r), bool(term)))
    return out


def test_sb3_expert_npz_written_from_an_sb3_rollout(tmp_path):
    """The expert .npz as Stable-Baselines' generate_expert_traj writes it, from an SB3 model acting in an SB3
    vectorised environment."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    model = PPO("MlpPolicy", venv, n_steps=64, seed=0, device="cpu")
    obs = venv.reset()
    rows: dict[str, list] = {"obs": [], "actions": [], "rewards": [], "episode_starts": []}
    returns, ret, start = [], 0.0, True
    while len(returns) < 3:
        action, _ = model.predict(obs, deterministic=True)
        rows["obs"].append(obs[0])
        rows["actions"].append(action.reshape(1))
        rows["episode_starts"].append(start)
        obs, reward, done, _ = venv.step(action)
        rows["rewards"].append(reward[0])
        ret += float(reward[0])
        start = bool(done[0])
        if done[0]:
            returns.append(ret)
            ret = 0.0
    arrays = {k: np.asarray(v) for k, v in rows.items()}
    arrays["episode_returns"] = np.asarray(returns)
    path = tmp_path / "expert_cartpole.npz"
    np.savez(path, **arrays)

    meta = import_demos(path, "sb3", tmp_path / "demos.npz", env_id="CartPole-v1", random_return_value=20.0)
    trajs, saved = load_trajectories(tmp_path / "demos.npz")
    assert saved["expert_mean_return"] == pytest.approx(np.mean(returns)) == meta["expert_mean_return"]
    assert saved["random_mean_return"] == 20.0 and saved["imported_from"]["format"] == "sb3"
    starts = np.flatnonzero(arrays["episode_starts"])
    assert len(trajs) == 3
    for t, a in zip(trajs, starts, strict=True):  # each episode minus its last action (no next observation)
        np.testing.assert_array_equal(t.obs, arrays["obs"][a:a + len(t) + 1])
        np.testing.assert_array_equal(t.acts, arrays["actions"][a:a + len(t), 0])
        assert t.acts.dtype.kind == "i" and not t.dones.any()


def test_missing_random_return_is_measured_in_the_environment(tmp_path):
    eps = _episodes("Pendulum-v1", 2)
    obs = np.concatenate([o[:-1] for o, *_ in eps])
    next_obs = np.concatenate([o[1:] for o, *_ in eps])
    starts = np.concatenate([np.arange(len(a)) == 0 for _, a, *_ in eps])
    np.savez(tmp_path / "e.npz", obs=obs, next_obs=next_obs, actions=np.concatenate([a for _, a, *_ in eps]),
             rewards=np.concatenate([r for *_, r, _ in eps]), episode_starts=starts)
    meta = import_demos(tmp_path / "e.npz", "sb3", tmp_path / "d.npz", env_id="Pendulum-v1",
                        expert_return=-100.0, random_episodes=2)
    assert meta["random_episodes"] == 2 and -2000 < meta["random_mean_return"] < -100
    # a user's own environment, named module:EnvId on the command line (a file may not name one)
    user = _episodes("user_envs:PointMass-v0", 2)
    np.savez(tmp_path / "u.npz", obs=np.concatenate([o[:-1] for o, *_ in user]),
             next_obs=np.concatenate([o[1:] for o, *_ in user]), actions=np.concatenate([a for _, a, *_ in user]),
             rewards=np.concatenate([r for *_, r, _ in user]),
             episode_starts=np.concatenate([np.arange(len(a)) == 0 for _, a, *_ in user]))
    assert cli("data", "import", str(tmp_path / "u.npz"), "--format", "sb3", "--env", "user_envs:PointMass-v0",
               "--expert-return", "0", "--random-episodes", "2", "--out", str(tmp_path / "u_demos.npz")) == 0
    assert load_trajectories(tmp_path / "u_demos.npz")[1]["env_id"] == "user_envs:PointMass-v0"
    trajs, _ = load_trajectories(tmp_path / "d.npz")
    np.testing.assert_array_equal(trajs[1].obs, eps[1][0])  # next_obs keeps every transition


def test_imitation_huggingface_directory_round_trips(tmp_path):
    """A directory in imitation's format (``serialize.save``: ``datasets.Dataset.from_dict(...).save_to_disk``),
    written by the real ``datasets`` library; the jsonpickled infos are never decoded."""
    datasets = pytest.importorskip("datasets")
    eps = _episodes("CartPole-v1", 3, seed=4)
    ds = datasets.Dataset.from_dict({
        "obs": [o for o, *_ in eps], "acts": [a for _, a, *_ in eps],
        "infos": [[json.dumps({"py/object": "os.system"})] * len(a) for _, a, *_ in eps],
        "terminal": [t for *_, t in eps], "rews": [r for *_, r, _ in eps]})
    ds.save_to_disk(str(tmp_path / "rollouts"))
    import_demos(tmp_path / "rollouts", "imitation", tmp_path / "d.npz", env_id="CartPole-v1",
                 random_return_value=5.0, expert_return=30.0)
    trajs, _ = load_trajectories(tmp_path / "d.npz")
    for t, (o, a, r, term) in zip(trajs, eps, strict=True):
        np.testing.assert_allclose(t.obs, o)
        np.testing.assert_array_equal(t.acts, a)
        np.testing.assert_allclose(t.rews, r)
        assert t.terminal == term


def test_imitation_trajectory_objects_convert():
    """imitation's in-memory TrajectoryWithRew (frozen dataclasses with these fields), duck-typed."""
    from dataclasses import dataclass

    from mbirl.data.interop import from_trajectory_objects

    @dataclass(frozen=True)
    class TrajectoryWithRew:
        obs: np.ndarray
        acts: np.ndarray
        infos: object
        terminal: bool
        rews: np.ndarray

    eps = _episodes("CartPole-v1", 2, seed=9)
    trajs = from_trajectory_objects([TrajectoryWithRew(o, a, None, t, r) for o, a, r, t in eps])
    for t, (o, a, r, term) in zip(trajs, eps, strict=True):
        np.testing.assert_allclose(t.obs, o)
        np.testing.assert_array_equal(t.acts, a)
        np.testing.assert_allclose(t.rews, r)
        assert t.terminal == term
    with pytest.raises(InputError, match="lacks"):
        from_trajectory_objects([object()])


def test_imitation_flat_npz_round_trips(tmp_path):
    eps = _episodes("Pendulum-v1", 2, seed=1)
    lengths = [len(a) for _, a, *_ in eps]
    np.savez(tmp_path / "old.npz", obs=np.concatenate([o for o, *_ in eps]),
             acts=np.concatenate([a for _, a, *_ in eps]),
             indices=np.cumsum(lengths)[:-1], terminal=np.asarray([t for *_, t in eps]),
             rews=np.concatenate([r for *_, r, _ in eps]))
    meta = import_demos(tmp_path / "old.npz", "imitation", tmp_path / "d.npz", env_id="Pendulum-v1",
                        random_return_value=-5000.0)
    trajs, _ = load_trajectories(tmp_path / "d.npz")
    assert [len(t) for t in trajs] == lengths
    assert meta["expert_mean_return"] == pytest.approx(np.mean([r.sum() for *_, r, _ in eps]))


def test_minari_dataset_written_by_minari_imports_and_exports_back(tmp_path, monkeypatch):
    """A dataset minari writes (``create_dataset_from_buffers``; its ``DataCollector`` needs jax) imports with its
    environment id and reference scores; our demos export to a dataset minari loads, and back unchanged."""
    minari = pytest.importorskip("minari")
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "root"))
    eps = _episodes("Pendulum-v1", 3, seed=6)
    buffers = [EpisodeBuffer(id=i, observations=list(o), actions=list(a), rewards=list(r),
                             terminations=[False] * len(a), truncations=[j == len(a) - 1 for j in range(len(a))])
               for i, (o, a, r, _) in enumerate(eps)]
    with pytest.warns(UserWarning):
        dataset = minari.create_dataset_from_buffers("test/pendulum/random-v0", buffers, env="Pendulum-v1",
                                                     ref_min_score=-1500.0, ref_max_score=-100.0,
                                                     algorithm_name="random", author="tests")
    episodes = list(dataset.iterate_episodes())
    meta = import_demos(tmp_path / "root" / "test" / "pendulum" / "random-v0", "minari", tmp_path / "d.npz")
    assert (meta["env_id"], meta["expert_mean_return"], meta["random_mean_return"]) == ("Pendulum-v1", -100.0,
                                                                                      -1500.0)
    trajs, _ = load_trajectories(tmp_path / "d.npz")
    for t, ep in zip(trajs, episodes, strict=True):
        np.testing.assert_allclose(t.obs, ep.observations)
        np.testing.assert_allclose(t.acts, ep.actions)
    # and out again: our shipped demos as a Minari dataset that minari itself loads
    out = export_minari(PENDULUM, tmp_path / "export", "mbirl/pendulum/expert-v0")
    loaded = minari.MinariDataset(str(out / "data"))
    assert loaded.total_episodes == 20 and loaded.spec.env_spec.id == "Pendulum-v1"
    original, original_meta = load_trajectories(PENDULUM)
    back = read_minari(out)
    assert back.expert_return == pytest.approx(original_meta["expert_mean_return"])
    assert back.random_return == pytest.approx(original_meta["random_mean_return"])
    np.testing.assert_allclose(back.trajectories[7].obs, original[7].obs)
    np.testing.assert_allclose(back.trajectories[7].acts, original[7].acts)


def test_d4rl_hdf5_round_trips(tmp_path):
    h5py = pytest.importorskip("h5py")
    eps = _episodes("CartPole-v1", 3, seed=2)
    with h5py.File(tmp_path / "d4rl.hdf5", "w") as f:
        f["observations"] = np.concatenate([o[:-1] for o, *_ in eps])
        f["next_observations"] = np.concatenate([o[1:] for o, *_ in eps])
        f["actions"] = np.concatenate([a for _, a, *_ in eps])
        f["rewards"] = np.concatenate([r for *_, r, _ in eps])
        f["terminals"] = np.concatenate([(np.arange(len(a)) == len(a) - 1) & t for _, a, _, t in eps])
        f["timeouts"] = np.concatenate([(np.arange(len(a)) == len(a) - 1) & (not t) for _, a, _, t in eps])
        f.attrs["env_id"] = "CartPole-v1"
    assert cli("data", "import", str(tmp_path / "d4rl.hdf5"), "--format", "d4rl", "--out", str(tmp_path / "d.npz"),
               "--random-return", "10", "--expert-return", "30") == 0
    trajs, meta = load_trajectories(tmp_path / "d.npz")
    assert meta["env_id"] == "CartPole-v1" and meta["command"].startswith("mbirl ")
    for t, (o, a, _, term) in zip(trajs, eps, strict=True):
        np.testing.assert_allclose(t.obs, o)
        np.testing.assert_array_equal(t.acts, a)
        assert t.terminal == term


def _bad_files(tmp_path):
    import h5py

    np.savez(tmp_path / "no_actions.npz", obs=np.zeros((4, 3)), episode_starts=np.array([1, 0, 0, 0], bool))
    np.savez(tmp_path / "pickled.npz", obs=np.zeros((4, 3)), actions=np.array([{"a": 1}] * 4, dtype=object),
             episode_starts=np.array([1, 0, 0, 0], bool))
    np.savez(tmp_path / "short.npz", obs=np.zeros((4, 3)), actions=np.zeros((3, 1)),
             episode_starts=np.array([1, 0, 0, 0], bool))
    (tmp_path / "garbage.hdf5").write_bytes(b"not hdf5 at all")
    with h5py.File(tmp_path / "ragged.hdf5", "w") as f:
        f["observations"], f["actions"] = np.zeros((5, 3)), np.zeros((4, 1))
        f["rewards"], f["terminals"] = np.zeros(5), np.zeros(5, bool)
    with h5py.File(tmp_path / "module_env.hdf5", "w") as f:
        f["observations"], f["actions"] = np.zeros((5, 3), np.float32), np.zeros((5, 1), np.float32)
        f["rewards"], f["terminals"] = np.zeros(5), np.zeros(5, bool)
        f.attrs["env_id"] = "os:system"
    (tmp_path / "not_minari").mkdir()
    (tmp_path / "not_hf").mkdir()
    return [("sb3", "no_actions.npz", "actions"), ("sb3", "pickled.npz", "actions"),
            ("sb3", "short.npz", "one row per step"),
            ("d4rl", "garbage.hdf5", "HDF5"), ("d4rl", "ragged.hdf5", "actions"),
            ("d4rl", "module_env.hdf5", "--env"), ("minari", "not_minari", "Minari"),
            ("imitation", "not_hf", "HuggingFace"), ("nope", "no_actions.npz", "format")]


def test_malformed_files_are_rejected_with_one_line_errors(tmp_path, capsys):
    for fmt, name, expected in _bad_files(tmp_path):
        with pytest.raises(InputError, match=expected):
            import_demos(tmp_path / name, fmt, tmp_path / "out.npz", random_return_value=0.0, expert_return=1.0)
        assert cli("data", "import", str(tmp_path / name), "--format", fmt, "--out", str(tmp_path / "o.npz"),
                   "--random-return", "0", "--expert-return", "1") == 2
        err = capsys.readouterr().err
        assert err.startswith("mbirl: error: ") and err.count("\n") == 1, (name, err)
    assert not (tmp_path / "o.npz").exists()
