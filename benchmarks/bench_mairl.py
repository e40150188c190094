"""MAIRL figures and numbers, reproducibly: learning curves over seeds and environments, forward-model errors by
model type, and a rollout video.

    .venv/bin/python benchmarks/bench_mairl.py --out runs/mairl_bench                      # everything
    .venv/bin/python benchmarks/bench_mairl.py --out runs/mairl_bench --envs Pendulum-v1 --seeds 0,1,2 --skip-models

Each run is an ordinary ``mbirl mairl train`` run directory under ``OUT/<env>/<variant>-<dynamics>-s<seed>``
(resumed if it exists, so an interrupted benchmark continues). Writes ``OUT/learning_curves.png``,
``OUT/models/model_errors.{json,png}``, ``OUT/<env>.mp4`` and ``OUT/summary.json`` / ``OUT/summary.md``, and
prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mbirl.algorithms.mairl import MAIRLConfig
from mbirl.experiments.mairl_run import (
    MAIRLRunConfig,
    ModelComparisonConfig,
    compare_models,
    evaluate_run,
    plot_return_curves,
    run_mairl,
)

BUDGETS = {"Pendulum-v1": 50_000, "CartPole-v1": 50_000, "InvertedPendulum-v5": 50_000, "Hopper-v5": 1_000_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/mairl_bench"))
    parser.add_argument("--envs", default="Pendulum-v1,CartPole-v1,InvertedPendulum-v5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dynamics", default=MAIRLConfig.dynamics)
    parser.add_argument("--variant", default=MAIRLConfig.variant)
    parser.add_argument("--env-steps", type=int, default=None, help="override the per-environment budget")
    parser.add_argument("--model-env", default="Pendulum-v1", help="environment of the model comparison")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--skip-video", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (as `mbirl --threads`)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    envs = [e for e in args.envs.split(",") if e]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    summary: dict[str, dict[str, object]] = {}
    dirs = []
    for env in envs:
        finals = []
        for seed in seeds:
            run_dir = args.out / env / f"{args.variant}-{args.dynamics}-s{seed}"
            cfg = MAIRLRunConfig(demos=f"data/demos/{env}.npz", env=env, seed=seed,
                                 env_steps=args.env_steps or BUDGETS.get(env, MAIRLRunConfig.env_steps),
                                 trainer=MAIRLConfig(dynamics=args.dynamics, variant=args.variant))
            t0 = time.perf_counter()
            m = run_mairl(cfg, run_dir, resume=True, progress=False)
            print(f"{env} seed {seed}: final normalised return {m['final_normalized_return']:.3f} "
                  f"(return {m['final_mean_return']:.1f}), best {m['best_normalized_return']:.3f}, "
                  f"{m['env_steps']} env steps, train {m['train_seconds']:.0f} s, "
                  f"wall {time.perf_counter() - t0:.0f} s",
                  flush=True)
            finals.append(m["final_normalized_return"])
            dirs.append(run_dir)
        summary[env] = {"seeds": seeds, "final_normalized_return": finals, "mean": float(np.mean(finals)),
                        "min": float(np.min(finals)), "seeds_at_least_0.9": int(sum(f >= 0.9 for f in finals))}
    plot_return_curves(dirs, args.out / "learning_curves.png",
                         title=f"MAIRL ({args.variant}/{args.dynamics}): normalised return, deterministic evaluation")
    if not args.skip_video:
        for env in envs:
            run_dir = args.out / env / f"{args.variant}-{args.dynamics}-s{seeds[0]}"
            out = evaluate_run(run_dir, 1, video=args.out / f"{env}.mp4")
            print(f"video {out['video']}: return {out['mean_return']:.1f}")
    if not args.skip_models:
        run_dir = args.out / args.model_env / f"{args.variant}-{args.dynamics}-s{seeds[0]}"
        res = compare_models(ModelComparisonConfig(demos=f"data/demos/{args.model_env}.npz",
                                                   run_dir=str(run_dir) if run_dir.exists() else None),
                             args.out / "models")
        summary["models"] = res
        for kind, r in res["models"].items():
            print(f"{kind:16s} 1-step {r['one_step']:.2e}  open-loop 10-step {r['open_loop'][-1]:.2e}  "
                  f"params {r['params']}  train {r['train_seconds']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| env | seeds | final normalised return per seed | mean | seeds >= 0.9 |", "|---|---|---|---|---|"]
    for env in envs:
        s = summary[env]
        per = ", ".join(f"{f:.3f}" for f in s["final_normalized_return"])  # type: ignore[attr-defined]
        lines.append(f"| {env} | {len(seeds)} | {per} | {s['mean']:.3f} | {s['seeds_at_least_0.9']}/{len(seeds)} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
