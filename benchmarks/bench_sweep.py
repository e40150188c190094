"""The results grid of the imitation baselines: every algorithm x Pendulum-v1, CartPole-v1, InvertedPendulum-v5 x 5
seeds x 100k environment steps, as one Ray Tune sweep, then its report (IQM with 95% stratified-bootstrap CIs,
sample-efficiency curves, performance profile, probability of improvement, steps to 0.9, wall-clock).

    .venv/bin/python benchmarks/bench_sweep.py --out runs/bench_grid               # the full grid (local Ray)
    .venv/bin/python benchmarks/bench_sweep.py --out runs/bench_grid --address auto  # on a running cluster
    .venv/bin/python benchmarks/bench_sweep.py --out runs/bench_tiny --tiny          # a smoke run (~1-2 min)

It is the same as the two commands

    mbirl bench run --algos ALL --envs Pendulum-v1,CartPole-v1,InvertedPendulum-v5 --seeds 0-4 \\
        --env-steps 100000 --out runs/bench_grid
    mbirl bench report runs/bench_grid --out runs/bench_grid/report

An interrupted grid continues where it stopped when run again (``--resume`` is added when OUT holds a sweep):
finished runs are kept, unfinished ones continue from their checkpoints. ``--tiny`` shrinks everything (2 seeds of
mairl and bc on Pendulum, 2k env steps, small networks) to check the machinery, not the algorithms.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mbirl.cli import main as mbirl

GRID_ENVS = "Pendulum-v1,CartPole-v1,InvertedPendulum-v5"
TINY = """\
eval_every: 500
eval_episodes: 2
mairl: {warmup_steps: 500, n_rollouts: 2, horizon: 5, batch_size: 64, model_steps: 2, model_pretrain_steps: 20,
        policy_hidden: [32], disc_hidden: [32]}
bc: {max_epochs: 8}
"""


def _run(args: list[str]) -> None:
    print("$ mbirl " + " ".join(args), flush=True)
    try:
        mbirl(args)
    except SystemExit as exc:
        if exc.code:
            raise


def main() -> None:
    from mbirl.experiments.imitation import ALGORITHMS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_grid"))
    parser.add_argument("--algos", default=",".join(ALGORITHMS.names), help="default: every registered algorithm")
    parser.add_argument("--envs", default=GRID_ENVS)
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--env-steps", type=int, default=100_000)
    parser.add_argument("--config", type=Path, default=None, help="YAML run settings shared by every run")
    parser.add_argument("--address", default=None, help="join a running Ray cluster (auto or HOST:PORT)")
    parser.add_argument("--cpus-per-trial", default=None)
    parser.add_argument("--reps", default=None, help="bootstrap resamples of the report")
    parser.add_argument("--tiny", action="store_true", help="a smoke run of the machinery (minutes)")
    args = parser.parse_args()
    config = args.config
    if args.tiny:
        args.algos, args.envs, args.seeds, args.env_steps = "mairl,bc", "Pendulum-v1", "0-1", 2_000
        args.out.mkdir(parents=True, exist_ok=True)
        config = args.out / "tiny.yaml"
        config.write_text(TINY)
    run = ["bench", "run", "--algos", args.algos, "--envs", args.envs, "--seeds", args.seeds,
           "--env-steps", str(args.env_steps), "--out", str(args.out)]
    if config is not None:
        run += ["--config", str(config)]
    if args.address:
        run += ["--address", args.address]
    if args.cpus_per_trial:
        run += ["--cpus-per-trial", args.cpus_per_trial]
    if (args.out / "sweep.json").exists():
        run.append("--resume")
    t0 = time.perf_counter()
    _run(run)
    report = ["bench", "report", str(args.out), "--out", str(args.out / "report")]
    if args.tiny:
        report += ["--reps", "500"]
    elif args.reps:
        report += ["--reps", args.reps]
    _run(report)
    print(f"done in {time.perf_counter() - t0:.0f} s; open {args.out / 'report' / 'index.html'}")


if __name__ == "__main__":
    main()
