"""Tutorial: bring demonstrations from Stable-Baselines3, ``imitation`` and Minari.

Each source becomes this project's demo file (``mbirl.import_demos``; ``mbirl data import`` on the command line),
with the normalisation returns the trainers need: the expert's from the episodes' rewards, the random policy's given
or measured on demand in the environment. Then any algorithm trains on it (behaviour cloning here).

    pip install 'mbirl[data]'                                   # minari, h5py, datasets
    python examples/bring_demos.py --out runs/tutorial_demos
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np

import mbirl
from mbirl.algorithms.bc import BCConfig


def sb3_expert_npz(path: Path, episodes: int) -> None:
    """What an SB3 user has: an agent's rollouts saved as Stable-Baselines' expert ``.npz`` (``obs``, ``actions``,
    ``rewards``, ``episode_starts``, ``episode_returns``)."""
    from stable_baselines3 import PPO

    env = gym.make("CartPole-v1")
    agent = PPO("MlpPolicy", env, seed=0, device="cpu", n_steps=256)
    if episodes > 5:  # the tutorial's full run trains a real expert; the quick one keeps the untrained agent
        agent.learn(total_timesteps=50_000)
    rows: dict[str, list] = {"obs": [], "actions": [], "rewards": [], "episode_starts": []}
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=i)
        done, total, start = False, 0.0, True
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            rows["obs"].append(obs)
            rows["actions"].append(np.asarray(action).reshape(1))
            rows["episode_starts"].append(start)
            obs, r, term, trunc, _ = env.step(int(action))
            rows["rewards"].append(r)
            total, start, done = total + float(r), False, term or trunc
        returns.append(total)
    np.savez(path, **{k: np.asarray(v) for k, v in rows.items()}, episode_returns=np.asarray(returns))


def main(out: Path, quick: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    # 1. Stable-Baselines3: the file names no environment, so say which; the random return is measured
    sb3_expert_npz(out / "sb3_expert.npz", 3 if quick else 20)
    meta_sb3 = mbirl.import_demos(out / "sb3_expert.npz", "sb3", out / "from_sb3.npz", env_id="CartPole-v1",
                                  random_episodes=5 if quick else 50)
    print(f"SB3: {meta_sb3['n']} episodes, expert {meta_sb3['expert_mean_return']:.1f}, random "
          f"{meta_sb3['random_mean_return']:.1f}")

    # 2. Minari: our shipped Pendulum demos out to a local Minari dataset and back (reference scores kept)
    dataset = mbirl.export_minari(mbirl.shipped_demos("Pendulum-v1"), out / "minari", "mbirl/pendulum/expert-v0")
    meta = mbirl.import_demos(dataset, "minari", out / "from_minari.npz")
    print(f"Minari: {meta['n']} episodes of {meta['env_id']}, expert {meta['expert_mean_return']:.1f}")

    # 3. imitation: a directory its serialize.save wrote (a HuggingFace datasets directory), here made with datasets
    import datasets

    trajs, _ = mbirl.load_trajectories(out / "from_sb3.npz")
    datasets.Dataset.from_dict({"obs": [t.obs for t in trajs], "acts": [t.acts for t in trajs],
                                "infos": [["{}"] * len(t) for t in trajs], "terminal": [t.terminal for t in trajs],
                                "rews": [t.rews for t in trajs]}).save_to_disk(str(out / "imitation_rollouts"))
    meta = mbirl.import_demos(out / "imitation_rollouts", "imitation", out / "from_imitation.npz",
                              env_id="CartPole-v1", random_return_value=meta_sb3["random_mean_return"])
    print(f"imitation: {meta['n']} episodes")

    # 4. any algorithm trains on an imported file
    cfg = mbirl.ImitationRunConfig(demos=str(out / "from_imitation.npz"), algo="bc",
                                   bc=BCConfig(max_epochs=2 if quick else 50), eval_episodes=2 if quick else 10)
    metrics = mbirl.run_imitation(cfg, out / "bc", progress=False)
    print(f"BC on the imported demos: normalised return {metrics['final_normalized_return']:.2f}")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial_demos"))
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    args = parser.parse_args()
    main(args.out, quick=args.quick)
