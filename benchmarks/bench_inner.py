"""Cost of differentiating through the inner loop: unrolled vs truncated vs implicit gradients.

For each horizon T and inner step count K: time of one outer step (inner solve + outer loss + backward to the cost),
time of the inner solve alone (no gradient), and peak memory of the step. One batched outer step on 3 placing demos,
time-dependent cost, inner SGD from zero actions (``--inner-lr``), a small action term so the inner problem has one
solution. On CUDA, memory is ``torch.cuda.max_memory_allocated``; on a CPU it is the peak of the bytes autograd holds
for the backward pass (the graph's memory, what grows with K), measured with saved-tensor hooks that count a saved
storage until its graph is freed (graphs built and dropped within one inner step count once, not once per step).

Then the cosine similarity of the implicit and unrolled gradients (float64): with a converged Gauss-Newton solver,
per horizon, and with SGD at each K (SGD is far from converged at these K: the inner Hessian's eigenvalues spread
over orders of magnitude). The targets (implicit memory at K=1000 within 1.5x of K=10, implicit step at most 3x
its inner solve, cosine >= 0.99 at convergence) are printed with whether they are met.

    python benchmarks/bench_inner.py [--quick] [--device cuda] [--horizons 10 40 100] [--ks 1 10 100 1000]
        [--cosine-only | --no-cosine] [--memory-only]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from mbirl.algorithms import DemoBatch, irl_loss
from mbirl.costs import make_cost
from mbirl.dynamics import KinematicKeypointDynamics
from mbirl.envs import default_kuka, generate_demos
from mbirl.planning import GradientMode, optimize_actions

MODES = (GradientMode.UNROLLED, GradientMode.TRUNCATED, GradientMode.IMPLICIT)
TARGET_MEMORY_RATIO = 1.5
"""Target: implicit peak memory at K=1000 over K=10."""
TARGET_STEP_OVER_SOLVE = 3.0
"""Target: one implicit outer step over the inner solve it differentiates."""
TARGET_COSINE = 0.99
"""Target: cosine similarity of the implicit and unrolled gradients at convergence."""


class SavedBytes:
    """Peak bytes of the tensors autograd holds for backward while active (the graph's memory): a storage counts
    from the first time an op saves it until the last tensor saved from it is freed with its graph, so graphs built
    and dropped inside a loop (an inner step taken without a gradient) count once, not once per step."""

    def __init__(self) -> None:
        self.peak = 0
        self._live = 0
        self._refs: dict[int, list[int]] = {}  # storage -> [bytes, saved tensors still alive]

    def _release(self, key: int) -> None:
        entry = self._refs[key]
        entry[1] -= 1
        if entry[1] == 0:
            self._live -= entry[0]
            del self._refs[key]

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        entry = self._refs.get(key)
        if entry is None:
            entry = self._refs[key] = [t.untyped_storage().nbytes(), 0]
            self._live += entry[0]
            self.peak = max(self.peak, self._live)
        entry[1] += 1
        weakref.finalize(t, self._release, key)
        return t

    @property
    def total(self) -> int:
        """The peak."""
        return self.peak

    def __enter__(self) -> SavedBytes:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def median_time(fn: Callable[[], object], repeats: int, device: torch.device, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def setup(T: int, device: torch.device, dtype: torch.dtype) -> tuple[Any, DemoBatch]:
    robot = default_kuka().to(dtype)
    demos = generate_demos("placing", 3, seed=0, horizon=T)
    batch = DemoBatch.from_demos(demos, dtype=dtype)
    batch = DemoBatch(q0=batch.q0.to(device), z=batch.z.to(device))
    return KinematicKeypointDynamics(robot).to(device), batch


def outer_step(dyn: Any, cost: torch.nn.Module, batch: DemoBatch, mode: GradientMode, inner: dict[str, Any]
               ) -> torch.Tensor:
    """One outer step's gradient (flattened) for the cost parameters."""
    u, _ = optimize_actions(dyn, cost, batch.q0, batch.goal, batch.horizon, grad_mode=mode, **inner)
    _, z = dyn.rollout(batch.q0, u)
    loss = irl_loss(z.flatten(-2), batch.z).mean()
    params = [p for p in cost.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--horizons", type=int, nargs="+", default=[10, 40, 100])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--inner-lr", type=float, default=0.005, help="inner SGD step size")
    parser.add_argument("--action-reg", type=float, default=1e-3, help="action-magnitude weight of the inner objective")
    parser.add_argument("--cg-iters", type=int, default=100, help="conjugate-gradient iterations of the implicit mode")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="T=10 only, K up to 100, one repeat")
    parser.add_argument("--cosine-only", action="store_true", help="only the implicit-vs-unrolled cosine table")
    parser.add_argument("--no-cosine", action="store_true", help="only the time and memory table")
    parser.add_argument("--memory-only", action="store_true", help="no timing: memory of each (T, K, mode) only")
    args = parser.parse_args()
    if args.quick:
        args.horizons, args.ks, args.repeats = [10], [k for k in args.ks if k <= 100], 1
    torch.set_num_threads(1)
    device = torch.device(args.device)
    inner = {"lr": args.inner_lr, "optimizer": "sgd", "action_weight": args.action_reg, "cg_max_iters": args.cg_iters,
             "truncate": 1}
    print(f"device {device}, torch threads {torch.get_num_threads()}, inner SGD lr {args.inner_lr}, action term "
          f"{args.action_reg}, truncated: last step, implicit: <= {args.cg_iters} CG iterations")
    print("| T | K | mode | outer step [ms] | inner solve [ms] | step / solve | memory [MiB] |")
    print("|---|---|---|---|---|---|---|")
    implicit_memory: dict[tuple[int, int], float] = {}
    ratios: dict[tuple[int, int], float] = {}
    for T in [] if args.cosine_only else args.horizons:
        dyn, batch = setup(T, device, torch.float32)
        for K in args.ks:
            kw = {**inner, "n_steps": K}
            cost = make_cost("timedep", horizon=T, dim=batch.z.shape[-1]).to(device)
            reps = args.repeats if K <= 100 else 1
            solve = math.nan if args.memory_only else median_time(
                partial(optimize_actions, dyn, cost, batch.q0, batch.goal, T, grad_mode=GradientMode.NONE, **kw),
                reps, device, K <= 100)
            for mode in MODES:
                step = math.nan if args.memory_only else median_time(
                    partial(outer_step, dyn, cost, batch, mode, kw), reps, device, K <= 100)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                    outer_step(dyn, cost, batch, mode, kw)
                    memory = (torch.cuda.max_memory_allocated(device) - base) / 2**20
                else:
                    with SavedBytes() as saved:
                        outer_step(dyn, cost, batch, mode, kw)
                    memory = saved.total / 2**20
                if mode == GradientMode.IMPLICIT:
                    implicit_memory[(T, K)] = memory
                    ratios[(T, K)] = step / solve
                print(f"| {T} | {K} | {mode.value} | {step * 1e3:.1f} | {solve * 1e3:.1f} | {step / solve:.2f} | "
                      f"{memory:.3f} |", flush=True)
    print()
    for T in args.horizons:
        if (T, 10) in implicit_memory and (T, 1000) in implicit_memory:
            ratio = implicit_memory[(T, 1000)] / implicit_memory[(T, 10)]
            print(f"T={T}: implicit memory K=1000 / K=10 = {ratio:.2f} (target <= {TARGET_MEMORY_RATIO}: "
                  f"{'met' if ratio <= TARGET_MEMORY_RATIO else 'NOT met'})")
    big = [r for (_, K), r in ratios.items() if K >= 100 and not math.isnan(r)]
    if big:
        print(f"implicit outer step / inner solve at K >= 100: {min(big):.2f} - {max(big):.2f} (target <= "
              f"{TARGET_STEP_OVER_SOLVE}: {'met' if max(big) <= TARGET_STEP_OVER_SOLVE else 'NOT met'})")
    if args.no_cosine:
        return
    print("\ncosine similarity of the implicit and unrolled gradients, float64 (time-dependent cost, 3 demos):")
    print("| T | inner solver | cos(implicit, unrolled) |")
    print("|---|---|---|")
    for T in args.horizons:
        dyn64, batch64 = setup(T, device, torch.float64)
        cost64 = make_cost("timedep", horizon=T, dim=batch64.z.shape[-1]).to(device, torch.float64)
        gn = {**inner, "optimizer": "gauss-newton", "n_steps": 20, "tol": 1e-9}
        c = cosine(outer_step(dyn64, cost64, batch64, GradientMode.UNROLLED, {**gn, "tol": None}),
                   outer_step(dyn64, cost64, batch64, GradientMode.IMPLICIT, gn))
        print(f"| {T} | Gauss-Newton, converged (20 steps unrolled; tol 1e-9 implicit) | {c:.5f} "
              f"(target >= {TARGET_COSINE}: {'met' if c >= TARGET_COSINE else 'NOT met'}) |", flush=True)
        if T == min(args.horizons):
            for K in args.ks:
                kw = {**inner, "n_steps": K}
                c = cosine(outer_step(dyn64, cost64, batch64, GradientMode.UNROLLED, kw),
                           outer_step(dyn64, cost64, batch64, GradientMode.IMPLICIT, kw))
                print(f"| {T} | SGD, K={K} | {c:.5f} |", flush=True)


if __name__ == "__main__":
    main()
