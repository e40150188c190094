"""The EPIC pseudometric: its defining properties on synthetic rewards, the true Pendulum reward against the
environment, and ``mbirl reward epic`` on a trained run."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest

from mbirl.cli import main
from mbirl.errors import InputError
from mbirl.rewards.epic import TRUE_REWARDS, EpicSamples, canonicalize, epic_distance, pearson_distance

GAMMA = 0.9


def _samples(seed: int = 0, n: int = 400, m: int = 64) -> EpicSamples:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 3))
    return EpicSamples(obs, rng.uniform(-2, 2, size=(n, 1)), obs + 0.1 * rng.normal(size=(n, 3)),
                       rng.normal(size=(m, 3)), rng.uniform(-2, 2, size=(m, 1)))


def _reward(o, a, o2):
    return -(o2**2).sum(-1) + 0.3 * o[:, 0] * a[:, 0] - 0.05 * a[:, 0] ** 2


def _potential(o):
    return np.sin(o[:, 0]) + o[:, 1] ** 3 - 2 * o[:, 2]


def test_epic_is_zero_for_shaping_and_scaling_one_for_negation_and_symmetric():
    s = _samples()
    shaped = lambda o, a, o2: _reward(o, a, o2) + GAMMA * _potential(o2) - _potential(o)  # noqa: E731
    scaled = lambda o, a, o2: 3.7 * _reward(o, a, o2) + 11.0  # noqa: E731
    negated = lambda o, a, o2: -_reward(o, a, o2)  # noqa: E731
    other = lambda o, a, o2: o[:, 1] * a[:, 0]  # noqa: E731
    assert epic_distance(_reward, shaped, s, GAMMA) < 1e-6
    assert epic_distance(_reward, scaled, s, GAMMA) < 1e-6
    assert epic_distance(_reward, negated, s, GAMMA) == pytest.approx(1.0, abs=1e-6)
    d = epic_distance(_reward, other, s, GAMMA)
    assert 0.3 < d < 1.0 and d == pytest.approx(epic_distance(other, _reward, s, GAMMA), abs=1e-12)
    # the shaping is invisible to EPIC but not to a plain correlation of the rewards themselves
    raw = pearson_distance(_reward(s.obs, s.act, s.next_obs), shaped(s.obs, s.act, s.next_obs))
    assert raw > 0.1
    # triangle inequality on a few rewards
    canon = [canonicalize(f, s, GAMMA) for f in (_reward, other, shaped, lambda o, a, o2: o2[:, 0])]
    for x in canon:
        for y in canon:
            for z in canon:
                assert pearson_distance(x, z) <= pearson_distance(x, y) + pearson_distance(y, z) + 1e-9


def test_canonicalization_matches_its_definition():
    s = _samples(n=5, m=7)
    c = canonicalize(_reward, s, GAMMA)
    s2 = np.roll(s.states, 1, axis=0)
    for i in range(5):
        from_next = np.mean([_reward(s.next_obs[i:i + 1], s.actions[j:j + 1], s2[j:j + 1])[0] for j in range(7)])
        from_here = np.mean([_reward(s.obs[i:i + 1], s.actions[j:j + 1], s2[j:j + 1])[0] for j in range(7)])
        overall = np.mean(_reward(s.states, s.actions, s2))
        want = _reward(s.obs[i:i + 1], s.act[i:i + 1], s.next_obs[i:i + 1])[0] + GAMMA * from_next - from_here - \
            GAMMA * overall
        assert math.isclose(c[i], want, rel_tol=1e-12, abs_tol=1e-12)


def test_bad_samples_and_rewards_are_refused():
    s = _samples()
    with pytest.raises(InputError, match="inconsistent lengths"):
        EpicSamples(s.obs, s.act[:-1], s.next_obs, s.states, s.actions)
    with pytest.raises(InputError, match="finite"):
        EpicSamples(s.obs * np.nan, s.act, s.next_obs, s.states, s.actions)
    with pytest.raises(InputError, match="not finite"):
        epic_distance(_reward, lambda o, a, o2: np.full(len(o), np.inf), s, GAMMA)
    with pytest.raises(InputError, match="gamma"):
        canonicalize(_reward, s, 1.5)


def test_true_pendulum_reward_is_the_environments():
    env = gym.make("Pendulum-v1")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    rows = []
    for _ in range(300):
        a = env.action_space.sample() * 1.5  # some beyond the box: the environment clips them
        nxt, r, *_ = env.step(a)
        rows.append((obs, a, nxt, r))
        obs = nxt
    o, a, o2, r = (np.array([row[i] for row in rows], np.float64) for i in range(4))
    np.testing.assert_allclose(TRUE_REWARDS["Pendulum-v1"](o, a, o2), r, rtol=1e-5, atol=1e-5)


def test_cli_reward_epic_on_a_trained_run(tmp_path, capsys):
    from mbirl.experiments.mairl_run import MAIRLRunConfig, run_mairl
    from test_mairl_run import _tiny

    run_dir = tmp_path / "run"
    run_mairl(_tiny(env_steps=200), run_dir, progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["reward", "epic", str(run_dir), "--coverage-steps", "300", "--mean-samples", "16"])
    assert exc.value.code in (0, None)
    out = json.loads((run_dir / "epic.json").read_text())
    assert set(out["epic"]) == {"g", "f", "logit"} and out["default_term"] == "g"
    assert all(0.0 <= d <= 1.0 for d in out["epic"].values())
    assert out["coverage_transitions"] == out["demo_transitions"] + 300
    assert "g            EPIC" in capsys.readouterr().out
    # the same seed gives the same figures
    with pytest.raises(SystemExit):
        main(["reward", "epic", str(run_dir), "--coverage-steps", "300", "--mean-samples", "16", "--out",
              str(tmp_path / "again.json")])
    assert json.loads((tmp_path / "again.json").read_text())["epic"] == out["epic"]
    assert MAIRLRunConfig  # the run type this command reads
    with pytest.raises(SystemExit) as exc:
        main(["reward", "heatmap", str(run_dir), "--resolution", "21"])
    assert exc.value.code in (0, None) and (run_dir / "reward_heatmap.png").stat().st_size > 10_000
    assert "Pearson" in capsys.readouterr().out
    from mbirl.experiments.reward_quality import reward_heatmap

    f_map = reward_heatmap(run_dir, tmp_path / "f.png", term="f", resolution=21)
    assert f_map["term"] == "f" and -1.0 <= f_map["pearson"] <= 1.0 and -1.0 <= f_map["spearman"] <= 1.0
    assert f_map["states_blank"] == 0 and f_map["states_drawn"] == 21 * 21  # Pendulum never terminates
    for args, message in [([str(tmp_path)], "not"), ([str(run_dir), "--mean-samples", "1"], "mean-samples"),
                          ([str(run_dir), "--out", str(tmp_path / "x.txt")], ".json")]:
        with pytest.raises(SystemExit) as exc:
            main(["reward", "epic", *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("mbirl: error:") and err.count("\n") == 1 and message in err, err
