"""MBIRL quality on the original placing settings, over several demo seeds.

For each seed: 6 placing demos (`mbirl kuka demos --task placing --n 6 --seed S`), 3 train / 2 test,
100 outer iterations, K=1, inner lr 1e-3, outer lr 1e-2, per-demo updates — every cost and baseline.
Prints the zero-action train loss (the original's "before training" figure), each method's final test
IRL loss per seed, and mean / median over seeds, next to the original code's single-run figures (quoted from
its published run, not measured here).

    python benchmarks/quality_mbirl.py [--seeds 0 1 2 3 4] [--outer-iters 100]
    python benchmarks/quality_mbirl.py --style original --robot original  # the official code's demos and robot
                                                                          # (seed 0 = its own run)
    python benchmarks/quality_mbirl.py --task reaching --n-demos 15 --train 0:1 --test 10:15 --seeds 0 1 2
    python benchmarks/quality_mbirl.py --config configs/placing_converged.yaml --methods default,timedep,path
                                                   # the learner's settings (``trainer:``) and outer iterations of a
                                                   # preset; demos, robot and split still come from the options here

"Not moving" is the test IRL loss of zero actions (the plan that stays at the start).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from mbirl.algorithms import DemoBatch, MBIRLConfig, irl_loss
from mbirl.data import save_keypoint_demos
from mbirl.dynamics import KinematicKeypointDynamics
from mbirl.envs import ROBOTS, generate_demos, generate_original_placing, robot_from_options
from mbirl.experiments import METHODS, MBIRLRunConfig, run_mbirl
from mbirl.experiments.kuka_irl import parse_split
from mbirl.validation import config_from_dict, load_config

ORIGINAL = {"weighted": 247.5, "timedep": 123.8, "rbf": 144.7}
"""The official code's final test IRL losses on its placing demos (quoted from its published run)."""
ORIGINAL_ZERO_ACTION = 1552.7
"""The official code's train IRL loss before training on its placing demos (quoted)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--outer-iters", type=int, default=None,
                        help=f"outer iterations (default: the preset's, else {MBIRLRunConfig.outer_iters})")
    parser.add_argument("--task", choices=["placing", "reaching"], default="placing")
    parser.add_argument("--n-demos", type=int, default=6, help="demos generated per seed")
    parser.add_argument("--train", default="{}:{}".format(*MBIRLRunConfig.train), help="train range START:STOP")
    parser.add_argument("--test", default="{}:{}".format(*MBIRLRunConfig.test), help="test range START:STOP")
    parser.add_argument("--inner-steps", type=int, default=MBIRLConfig.inner_steps)
    parser.add_argument("--inner-lr", type=float, default=MBIRLConfig.inner_lr)
    parser.add_argument("--noise", type=float, default=0.3, help="per-step demo noise [cm] (reachable style)")
    parser.add_argument("--style", choices=["reachable", "original"], default="reachable",
                        help="demo generator: this project's reachable demos or the official code's placing demos")
    parser.add_argument("--rbf-original", action="store_true", help="rbf cost in the official code's formulation")
    parser.add_argument("--robot", choices=ROBOTS.names, default=MBIRLRunConfig.robot,
                        help="built-in robot: kuka (PyBullet's KUKA + held object) or original (the official code's)")
    parser.add_argument("--urdf", default=None, help="a robot URDF instead of the built-in robot")
    parser.add_argument("--keypoint-links", default=None, help="comma-separated keypoint links of --urdf")
    parser.add_argument("--config", default=None,
                        help="YAML preset: its trainer settings replace --inner-steps/--inner-lr")
    parser.add_argument("--methods", default="all", help="comma-separated methods, or all")
    args = parser.parse_args()
    if args.style == "original" and args.task != "placing":
        parser.error("--style original exists for --task placing only")
    torch.set_num_threads(1)
    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    trainer = MBIRLConfig(inner_steps=args.inner_steps, inner_lr=args.inner_lr)
    if args.config is not None:
        preset = config_from_dict(MBIRLRunConfig, {"demos": "", **load_config(args.config, MBIRLRunConfig)},
                                  source=args.config)
        trainer = preset.trainer
        args.outer_iters = preset.outer_iters if args.outer_iters is None else args.outer_iters
    if args.outer_iters is None:
        args.outer_iters = MBIRLRunConfig.outer_iters
    results: dict[str, list[float]] = {m: [] for m in methods}
    rel: dict[str, list[float]] = {m: [] for m in methods}
    zero: list[float] = []
    still: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            demos = Path(tmp) / f"{args.task}_{seed}.npz"
            robot = robot_from_options(args.robot, args.urdf, args.keypoint_links)
            if args.style == "original":
                trajs = generate_original_placing(args.n_demos, seed=seed, robot=robot)
            else:
                trajs = generate_demos(args.task, args.n_demos, seed=seed, robot=robot, noise=args.noise)
            save_keypoint_demos(demos, trajs)
            test_split = parse_split(args.test, "test")
            for m in methods:
                cfg = MBIRLRunConfig(demos=str(demos), method=m, outer_iters=args.outer_iters, seed=seed,
                                     robot=args.robot, urdf=args.urdf, keypoint_links=args.keypoint_links,
                                     train=parse_split(args.train, "train"), test=test_split,
                                     rbf_original=args.rbf_original and m == "rbf", trainer=trainer)
                out = run_mbirl(cfg, Path(tmp) / f"{seed}_{m}", progress=False, figures=False)
                results[m].append(out["final_test_irl_loss"])
                rel[m].append(out["test_relative_goal_distance"])
            zero.append(out["zero_action_irl_loss_train"])
            test = DemoBatch.from_demos(trajs[test_split[0]:test_split[1]])
            with torch.no_grad():
                u0 = torch.zeros(len(test), test.horizon - 1, robot.n_joints)
                z0 = KinematicKeypointDynamics(robot).rollout(test.q0, u0)[1].flatten(-2)
                still.append(float(irl_loss(z0, test.z).mean()))
            print(f"seed {seed}: zero-action train loss {zero[-1]:.1f}; final test IRL loss "
                  + ", ".join(f"{m} {results[m][-1]:.1f}" for m in methods) + f", not moving {still[-1]:.1f}",
                  flush=True)
    print(f"\n{args.task} ({args.style} demos, robot {args.urdf or args.robot}), train {args.train}, test {args.test}, "
          f"{args.outer_iters} outer iterations, inner {trainer.inner_optimizer} K={trainer.inner_steps} "
          f"(tol {trainer.inner_tol}), inner lr {trainer.inner_lr}, {trainer.grad_mode} gradient, outer lr "
          f"{trainer.outer_lr}{', rbf original formulation' if args.rbf_original else ''}")
    print(f"zero-action train IRL loss: mean {statistics.mean(zero):.1f} (official code on its placing demos: "
          f"{ORIGINAL_ZERO_ACTION}, quoted); not moving, test: mean {statistics.mean(still):.1f}, per seed "
          + ", ".join(f"{v:.1f}" for v in still))
    print("| method | final test IRL loss mean | median | min | max | rel. goal distance mean | "
          "official code, placing (quoted) |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        v = results[m]
        print(f"| {m} | {statistics.mean(v):.1f} | {statistics.median(v):.1f} | {min(v):.1f} | {max(v):.1f} | "
              f"{statistics.mean(rel[m]):.3f} | {ORIGINAL.get(m, '') if args.task == 'placing' else 'n/a'} |")
    print("per seed: " + "; ".join(f"{m} " + ", ".join(f"{x:.1f}" for x in results[m]) for m in methods))


if __name__ == "__main__":
    main()
