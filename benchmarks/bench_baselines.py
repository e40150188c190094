"""GAIL and AIRL with a PPO generator and DAC with a SAC generator (the harness's model-free baselines): learning
curves over seeds and environments, printed and written as a table.

    .venv/bin/python benchmarks/bench_baselines.py --algos gail,airl --envs Pendulum-v1 --seeds 0,1,2 --env-steps 300000
    .venv/bin/python benchmarks/bench_baselines.py --envs CartPole-v1 --algos gail --ppo-set reward_norm=standardize
    .venv/bin/python benchmarks/bench_baselines.py --algos dac --envs Pendulum-v1 --env-steps 20000 --eval-every 5000
    .venv/bin/python benchmarks/bench_baselines.py --algos dac --envs Hopper-v5 --dac-set discriminator=airl

DAC (off-policy: one discriminator and one SAC update per environment step) needs far fewer environment steps and
far more compute per step (~30 ms on one CPU thread with its default 256-unit networks): give it its own
``--env-steps``. It refuses discrete environments (CartPole).

Each run is an ordinary ``mbirl il train`` run directory under ``OUT/<env>/<algo>-s<seed>`` (resumed if it exists,
so an interrupted benchmark continues; runs of other settings need another ``--out``). Every evaluation is the
harness's protocol (``--eval-episodes`` deterministic episodes, reset seeds 1000000+i, normalised 0 random /
1 expert by the demo file's returns). Per run it prints the final and the best evaluation; per environment and
algorithm the mean final, the mean best ("peak") over seeds and the peak of the seed-mean curve, the figure the
``imitation`` library's benchmark tables report. Writes ``OUT/summary.json``, ``OUT/summary.md`` and
``OUT/learning_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from mbirl.algorithms.adversarial_ppo import AdversarialPPOConfig
from mbirl.algorithms.dac import DACConfig
from mbirl.experiments.imitation import ImitationRunConfig, run_imitation
from mbirl.experiments.mairl_run import plot_return_curves
from mbirl.validation import config_from_dict

T = TypeVar("T")

BUDGETS = {"Pendulum-v1": 300_000, "CartPole-v1": 100_000, "InvertedPendulum-v5": 300_000, "Hopper-v5": 1_000_000}
"""Environment steps per run unless ``--env-steps`` is given."""


def _set_config(cls: type[T], pairs: list[str], option: str) -> T:
    """``name=value`` pairs of ``option`` (values read as JSON, else as strings) as config dataclass ``cls``."""
    raw: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            raw[name] = json.loads(value)
        except json.JSONDecodeError:
            raw[name] = value
    return config_from_dict(cls, raw, source=option)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/baselines_bench"))
    parser.add_argument("--algos", default="gail,airl")
    parser.add_argument("--envs", default="Pendulum-v1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--env-steps", type=int, default=None, help="override the per-environment budget")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=ImitationRunConfig.eval_episodes)
    parser.add_argument("--ppo-set", action="append", default=[], metavar="NAME=VALUE",
                        help="a field of AdversarialPPOConfig (repeatable), e.g. airl_entropy_weight=0")
    parser.add_argument("--dac-set", action="append", default=[], metavar="NAME=VALUE",
                        help="a field of DACConfig (repeatable), e.g. discriminator=airl")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (as `mbirl --threads`)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    algos = [a for a in args.algos.split(",") if a]
    envs = [e for e in args.envs.split(",") if e]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    ppo = _set_config(AdversarialPPOConfig, args.ppo_set, "--ppo-set")
    dac = _set_config(DACConfig, args.dac_set, "--dac-set")
    summary: dict[str, dict[str, Any]] = {}
    dirs = []
    for env in envs:
        for algo in algos:
            finals, bests, curves = [], [], []
            for seed in seeds:
                run_dir = args.out / env / f"{algo}-s{seed}"
                cfg = ImitationRunConfig(demos=f"data/demos/{env}.npz", env=env, algo=algo, seed=seed,
                                         env_steps=args.env_steps or BUDGETS.get(env, ImitationRunConfig.env_steps),
                                         eval_every=args.eval_every, eval_episodes=args.eval_episodes, ppo=ppo,
                                         dac=dac)
                t0 = time.perf_counter()
                m = run_imitation(cfg, run_dir, resume=True, progress=False)
                best = max(m["eval"], key=lambda e: e["normalized_return"])
                print(f"{env} {algo} seed {seed}: final normalised return {m['final_normalized_return']:.3f} "
                      f"(return {m['final_mean_return']:.1f}), best {best['normalized_return']:.3f} at "
                      f"{best['env_steps']} steps, {m['env_steps']} env steps, "
                      f"{m['seconds_per_1k_env_steps']:.2f} s / 1k steps, wall {time.perf_counter() - t0:.0f} s",
                      flush=True)
                finals.append(m["final_normalized_return"])
                bests.append(m["best_normalized_return"])
                curves.append([e["normalized_return"] for e in m["eval"]])
                dirs.append(run_dir)
            n = min(len(c) for c in curves)  # the same schedule for every seed: evaluations align by index
            mean_curve = np.mean([c[:n] for c in curves], axis=0)
            summary[f"{env} {algo}"] = {
                "env": env, "algo": algo, "seeds": seeds, "final_normalized_return": finals,
                "best_normalized_return": bests, "mean_final": float(np.mean(finals)),
                "std_final": float(np.std(finals)), "mean_best": float(np.mean(bests)),
                "peak_of_mean_curve": float(mean_curve.max()),
            }
            settings = {"dac": dac} if algo == "dac" else {"ppo": ppo} if algo in ("gail", "airl") else {}
            for name, config in settings.items():
                summary[f"{env} {algo}"][name] = {k: v for k, v in vars(config).items() if v is not None}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| env | algo | seeds | final normalised return per seed | mean final (std) | mean best | "
             "peak of mean curve |", "|---|---|---|---|---|---|---|"]
    for s in summary.values():
        per = ", ".join(f"{f:.3f}" for f in s["final_normalized_return"])
        lines.append(f"| {s['env']} | {s['algo']} | {len(seeds)} | {per} | {s['mean_final']:.3f} "
                     f"({s['std_final']:.3f}) | {s['mean_best']:.3f} | {s['peak_of_mean_curve']:.3f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    plot_return_curves(dirs, args.out / "learning_curves.png",
                       title=f"{' / '.join(a.upper() for a in algos)}: normalised return, deterministic evaluation")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
