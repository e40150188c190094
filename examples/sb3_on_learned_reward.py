"""Tutorial: train any Stable-Baselines3 algorithm on a reward learned by MAIRL (or AIRL, GAIL, DAC).

``mbirl.load_run(RUN_DIR).as_env_wrapper()`` is a gymnasium environment whose reward is the learned one (the true
reward stays in ``info["true_reward"]``); ``LearnedReward`` saves it as safetensors + JSON for use without the run.

    mbirl mairl train --demos data/demos/Pendulum-v1.npz --state-only --run-dir runs/mairl_so
    python examples/sb3_on_learned_reward.py --run-dir runs/mairl_so --out runs/tutorial_sb3
    python examples/sb3_on_learned_reward.py --quick --out /tmp/sb3        # seconds (what the tests run)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np

import mbirl
from mbirl.algorithms.mairl import MAIRLConfig


def main(out: Path, quick: bool = False, run_dir: Path | None = None) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    if run_dir is None:  # no run given: a small MAIRL run on the shipped Pendulum demonstrations
        run_dir = out / "mairl"
        tiny = {"warmup_steps": 100, "n_rollouts": 2, "horizon": 5, "batch_size": 32, "model_steps": 2,
                "model_pretrain_steps": 5} if quick else {}
        mbirl.run_imitation(mbirl.ImitationRunConfig(
            demos=str(mbirl.shipped_demos("Pendulum-v1")), algo="mairl", mairl=MAIRLConfig(state_only=True, **tiny),
            env_steps=300 if quick else 50_000, eval_every=300 if quick else 5_000, eval_episodes=1 if quick else 10),
            run_dir, progress=not quick)
    run = mbirl.load_run(run_dir)
    print(f"{run.algo} on {run.env_id}: {run.reward}")

    # the reward as a file of its own, and back
    path = run.reward.save(out / "reward.json")
    reward = mbirl.LearnedReward.load(path)
    env = reward.wrap(gym.make(run.env_id))

    agent = PPO("MlpPolicy", env, seed=0, device="cpu", verbose=0, n_steps=64 if quick else 1024,
                batch_size=64)
    agent.learn(total_timesteps=128 if quick else 200_000)
    # evaluate on the true reward: a fresh environment without the wrapper
    true_return, _ = evaluate_policy(agent, Monitor(gym.make(run.env_id)), n_eval_episodes=3)
    print(f"PPO on the learned reward: true return {true_return:.1f}")
    return {"true_return": float(true_return), "reward_term": reward.term, "finite": bool(np.isfinite(true_return))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial_sb3"))
    parser.add_argument("--run-dir", type=Path, default=None, help="a finished run (default: train a small one)")
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    args = parser.parse_args()
    main(args.out, quick=args.quick, run_dir=args.run_dir)
