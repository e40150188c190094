"""Tutorial: MAIRL on your own gymnasium environment, then an SB3 agent trained on the reward it learned.

Everything through the Python API: register your environment, train an expert (Stable-Baselines3 with its default
hyper-parameters: there is no preset for a new environment), record demonstrations, learn a reward with MAIRL
(state-only: the form meant to transfer), load the run and train a fresh SAC agent on the learned reward, scored on
the true one.

    python examples/mairl_own_env.py --out runs/tutorial_env   # 20k + 30k + 20k env steps: tens of minutes
    python examples/mairl_own_env.py --quick --out /tmp/env                # seconds (what the tests run)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import mbirl
from mbirl.algorithms.mairl import MAIRLConfig
from mbirl.experts.demos import generate_expert_demos
from mbirl.experts.train import ExpertRunConfig, load_expert, train_expert


class Reacher1D(gym.Env):
    """Your environment: a point on a line driven towards a target at x = 1 (observation ``(x, v)``, action a force
    in [-1, 1], reward ``-(x - 1)^2 - 0.01 a^2``). Its constructor takes no ``render_mode``; that is fine."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.state = np.zeros(2, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.state = np.array([self.np_random.uniform(-1, 0), 0.0], np.float32)
        return self.state.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        x, v = self.state
        v = 0.8 * v + 0.2 * a
        x = float(np.clip(x + 0.5 * v, -5, 5))
        self.state = np.array([x, v], np.float32)
        return self.state.copy(), -((x - 1.0) ** 2) - 0.01 * a**2, False, False, {}


ENV_ID = "Reacher1D-v0"
if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=Reacher1D, max_episode_steps=40)


def main(out: Path, quick: bool = False) -> dict:
    from stable_baselines3 import SAC

    # 1. an expert and its demonstrations (with the expert's and a random policy's returns, for normalisation)
    expert = train_expert(ExpertRunConfig(env=ENV_ID, algo="sac", steps=300 if quick else 20_000,
                                          eval_every=300 if quick else 5_000), out / "expert", progress=False)
    demos = out / "demos.npz"
    generate_expert_demos(ENV_ID, load_expert(out / "expert"), 3 if quick else 10, demos, seed=0)

    # 2. MAIRL with a state-only reward g(s)
    trainer = MAIRLConfig(state_only=True, **({"warmup_steps": 100, "n_rollouts": 2, "horizon": 5, "batch_size": 32,
                                               "model_steps": 2, "model_pretrain_steps": 5} if quick else {}))
    cfg = mbirl.ImitationRunConfig(demos=str(demos), algo="mairl", mairl=trainer, seed=0,
                                   env_steps=300 if quick else 30_000, eval_every=300 if quick else 5_000,
                                   eval_episodes=2 if quick else 10)
    metrics = mbirl.run_imitation(cfg, out / "mairl", progress=not quick)
    print(f"MAIRL: normalised return {metrics['final_normalized_return']:.2f}")

    # 3. the learned reward in a fresh environment; an unmodified SB3 algorithm trains on it
    run = mbirl.load_run(out / "mairl")
    print(f"learned reward: {run.reward}")
    env = run.as_env_wrapper()
    agent = SAC("MlpPolicy", env, seed=0, device="cpu", verbose=0, learning_starts=100 if quick else 1000)
    agent.learn(total_timesteps=200 if quick else 20_000)

    # 4. score the new agent on the true reward (kept in info["true_reward"] by the wrapper)
    true_env = gym.make(ENV_ID)
    returns = []
    for i in range(3):
        obs, _ = true_env.reset(seed=1000 + i)
        done, total = False, 0.0
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = true_env.step(action)
            total += float(r)
            done = term or trunc
        returns.append(total)
    print(f"SAC on the learned reward: true return {np.mean(returns):.1f} (expert {expert.best_return:.1f})")
    return {"mairl": metrics, "sb3_true_return": float(np.mean(returns))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial_env"))
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    args = parser.parse_args()
    main(args.out, quick=args.quick)
