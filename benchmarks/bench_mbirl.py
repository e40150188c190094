"""MBIRL speed benchmark: prints seconds per outer iteration and the ratios the targets are stated in.

Run with ``make bench`` (or ``python benchmarks/bench_mbirl.py [--quick]``). All ratios are measured in
one process, one after the other, so machine noise affects numerator and denominator alike. Every printed figure is
measured by this run, except the original code's time, which is quoted (and labelled so); each target is printed
with whether the measurement meets it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mbirl.algorithms import MBIRL, DemoBatch, MBIRLConfig
from mbirl.costs import make_cost
from mbirl.dynamics import KinematicKeypointDynamics
from mbirl.envs import REST_POSE, default_kuka, generate_demos

ORIGINAL_CODE_SECONDS = 3.6
"""Seconds per outer iteration of the original code in the original setting: quoted (docs/results/mbirl.md), not
measured here."""
TARGET_MS_PER_OUTER_ITER = 70.0
"""Target: milliseconds per outer iteration in the original setting."""
TARGET_STEP_OVER_ROLLOUT = 10.0
"""Target: a bi-level outer step costs at most this many rollout forwards."""
TARGET_64_OVER_1 = 3.0
"""Target: an outer step on 64 demos costs at most this many times one on 1 demo."""


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "NOT met"


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired(fn_a: Callable[[], object], fn_b: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median times of ``fn_a`` and ``fn_b`` measured alternately (A, B, A, B, ...), so load changes on a
    shared machine hit both alike; ratios come from these."""
    for _ in range(2):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn_a()
        t1 = time.perf_counter()
        fn_b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def synthetic_batch(dyn: KinematicKeypointDynamics, n: int, horizon: int, seed: int = 0) -> DemoBatch:
    """Reachable demonstrations from small random joint motions (timing does not depend on their shape)."""
    g = torch.Generator().manual_seed(seed)
    q0 = torch.tensor(REST_POSE).expand(n, -1)
    u = 0.03 * torch.randn(n, horizon - 1, dyn.n_joints, generator=g)
    with torch.no_grad():
        _, z = dyn.rollout(q0, u)
    return DemoBatch(q0=q0.clone(), z=z.flatten(-2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller grid")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small ops gain nothing from more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps = 5 if args.quick else 20
    dyn = KinematicKeypointDynamics(default_kuka())

    # 1. The original setting: 3 train + 2 test placing demos, T=10, K=1, per-demo updates + test evaluation.
    demos = generate_demos("placing", 6, seed=0)
    train, test = DemoBatch.from_demos(demos[:3]), DemoBatch.from_demos(demos[3:5])
    print("== original setting: 3 train + 2 test demos, T=10, K=1, per-demo updates, incl. test evaluation")
    print(f"  original code: {ORIGINAL_CODE_SECONDS} s per outer iteration (quoted from docs/results/mbirl.md, "
          "not measured)")
    for name in ("weighted", "timedep", "rbf", "neural"):
        learner = MBIRL(make_cost(name, horizon=10, dim=6), dyn, train, test)

        def outer(learner: MBIRL = learner) -> None:
            learner.outer_iteration()
            learner.evaluate(test)

        ms = timeit(outer, reps * 2) * 1000
        print(f"  {name:9s} {ms:7.2f} ms / outer iteration (measured; target <= {TARGET_MS_PER_OUTER_ITER:g} ms: "
              f"{verdict(ms, TARGET_MS_PER_OUTER_ITER)}; {ORIGINAL_CODE_SECONDS * 1000 / ms:.0f}x faster than the "
              "quoted original)")

    # 2. Grid over horizon, inner steps and number of demonstrations (batched updates); each 64-demo run is
    # timed alternately with the 1-demo run of the same (T, K), so their ratio is measured under equal load.
    print("\n== seconds per outer iteration, batched update (time-dependent cost)")
    print(f"  {'T':>3} {'K':>3} {'1 demo':>9} {'8 demos':>9} {'64 demos':>9} {'64/1':>6}")
    grid_T = (10, 20) if args.quick else (10, 20, 40)
    grid_K = (1, 5) if args.quick else (1, 5, 10)
    ratios_64: list[tuple[int, int, float]] = []

    def learner_for(T: int, K: int, N: int) -> MBIRL:
        return MBIRL(make_cost("timedep", horizon=T, dim=6), dyn, synthetic_batch(dyn, N, T),
                     config=MBIRLConfig(inner_steps=K, update="batched"))

    for T in grid_T:
        for K in grid_K:
            rounds = max(5, reps // (1 + K // 5))
            one, many = learner_for(T, K, 1), learner_for(T, K, 64)
            t1, t64 = paired(one.outer_iteration, many.outer_iteration, rounds)
            t8 = timeit(learner_for(T, K, 8).outer_iteration, rounds)
            ratios_64.append((T, K, t64 / t1))
            print(f"  {T:>3} {K:>3} {t1:>9.4f} {t8:>9.4f} {t64:>9.4f} {t64 / t1:>6.2f}")

    # 3. Ratios.
    print("\n== ratios (same process, same batch, timed alternately)")
    for N in (3, 8):
        batch = synthetic_batch(dyn, N, 10)
        learner = MBIRL(make_cost("timedep", horizon=10, dim=6), dyn, batch, config=MBIRLConfig(update="batched"))
        u = torch.zeros(N, 9, dyn.n_joints)

        def rollout(batch: DemoBatch = batch, u: torch.Tensor = u) -> None:
            with torch.no_grad():
                dyn.rollout(batch.q0, u)

        t_step, t_roll = paired(learner.outer_iteration, rollout, reps * 5)
        r = t_step / t_roll
        print(f"  bi-level outer step / rollout forward, {N} demos, T=10, K=1: {r:5.1f}x "
              f"({t_step * 1000:.2f} ms / {t_roll * 1000:.2f} ms; target <= {TARGET_STEP_OVER_ROLLOUT:g}x: "
              f"{verdict(r, TARGET_STEP_OVER_ROLLOUT)})")
    for T, K, r in ratios_64:
        print(f"  64 demos / 1 demo, T={T:>2}, K={K:>2}: {r:5.2f}x (target <= {TARGET_64_OVER_1:g}x: "
              f"{verdict(r, TARGET_64_OVER_1)})")

    # 4. Why large batches scale: the keypoint FK (forward + backward) as a log-depth tree of batched 4x4
    # products vs the batch-last chain that KeypointRobot switches to from BATCH_LAST_MIN states on.
    fk = dyn.robot.serial_fk
    assert fk is not None
    print("\n== keypoint FK forward + backward: tree of bmm products / batch-last chain (timed alternately)")
    for n in (40, 640, 2560):
        q = torch.rand(n, dyn.n_joints, generator=torch.Generator().manual_seed(n)).requires_grad_(True)

        def tree(q: torch.Tensor = q) -> None:
            fk.tree_forward(q).sum().backward()

        def last(q: torch.Tensor = q) -> None:
            fk.chain_last(q, frames=False)[0].sum().backward()

        t_tree, t_last = paired(tree, last, reps * 5)
        print(f"  {n:5d} states: {t_tree * 1e6:7.0f} us / {t_last * 1e6:7.0f} us = {t_tree / t_last:4.2f}x")


if __name__ == "__main__":
    main()
