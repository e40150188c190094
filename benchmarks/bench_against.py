"""Speed of the K=1 path against another revision of this repository, timed alternately in one run.

Checks that a change left the original setting's speed alone (3 train + 2 test placing demos, T=10, K=1, per-demo
updates and the test evaluation, every linear cost and the neural one): the other revision is checked out in a
temporary ``git worktree``; each round runs one child process on it and one on this checkout (first one, then the
other, in alternating order), each timing ``--iters`` outer iterations per cost after a warm-up. Prints each
round's milliseconds and, per cost, the median ratio this checkout / the other revision over the rounds with its
range: machine load changes between rounds but affects both sides of a round alike.

    python benchmarks/bench_against.py [--against REV] [--rounds 8] [--iters 60]

The default ``--against`` is the commit before the converged-solver work (implicit gradients, Gauss-Newton, the
path cost), whose target was that the K=1 path's speed is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_CONVERGED_SOLVERS = "d7fcf0a^"
"""The commit before the converged-solver work (the issue it belongs to asked for an unchanged K=1 speed)."""
COSTS = ("weighted", "timedep", "rbf", "neural")

CHILD = r"""
import json, statistics, sys, time
import torch
import mbirl
from mbirl.algorithms import MBIRL, DemoBatch
from mbirl.costs import make_cost
from mbirl.dynamics import KinematicKeypointDynamics
from mbirl.envs import default_kuka, generate_demos

torch.set_num_threads(1)
iters = int(sys.argv[1])
dyn = KinematicKeypointDynamics(default_kuka())
demos = generate_demos("placing", 6, seed=0)
train, test = DemoBatch.from_demos(demos[:3]), DemoBatch.from_demos(demos[3:5])
out = {"module": mbirl.__file__}
for name in sys.argv[2:]:
    learner = MBIRL(make_cost(name, horizon=10, dim=6), dyn, train, test)
    for _ in range(5):
        learner.outer_iteration()
        learner.evaluate(test)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        learner.outer_iteration()
        learner.evaluate(test)
        times.append(time.perf_counter() - t0)
    out[name] = statistics.median(times) * 1000
print(json.dumps(out))
"""


def time_tree(src: Path, iters: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(iters), *COSTS], env=env, capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    module = Path(result.pop("module")).resolve()
    if not module.is_relative_to(src.resolve()):
        raise SystemExit(f"the child imported {module}, not the tree under {src}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default=BEFORE_CONVERGED_SOLVERS, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iters", type=int, default=60, help="timed outer iterations per cost and child")
    args = parser.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "other"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=ROOT, check=True)
        try:
            ratios: dict[str, list[float]] = {c: [] for c in COSTS}
            print(f"ms per outer iteration (incl. test evaluation), this checkout ({head}, with its uncommitted "
                  f"changes) vs {args.against} ({rev}); 1 torch thread")
            print("| round | " + " | ".join(f"{c} now / then" for c in COSTS) + " |")
            print("|---|" + "---|" * len(COSTS))
            for r in range(args.rounds):
                order = [("now", ROOT / "src"), ("then", tree / "src")]
                if r % 2:
                    order.reverse()
                ms = {label: time_tree(src, args.iters) for label, src in order}
                for c in COSTS:
                    ratios[c].append(ms["now"][c] / ms["then"][c])
                print(f"| {r} | " + " | ".join(f"{ms['now'][c]:.2f} / {ms['then'][c]:.2f}" for c in COSTS) + " |",
                      flush=True)
            print()
            for c in COSTS:
                print(f"{c:9s} now / then: median {statistics.median(ratios[c]):.3f} "
                      f"(range {min(ratios[c]):.3f}-{max(ratios[c]):.3f} over {args.rounds} rounds)")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
