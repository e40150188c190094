"""Tutorial: MBIRL on your own URDF robot with your own cost.

Learns the parameters of a cost you write (a subclass of ``mbirl.KeypointCost``) from demonstrations of a robot you
describe in a URDF file, by differentiating through the gradient-based MPC inner loop (docs/design.md, "MBIRL").

    python examples/mbirl_own_robot.py --out runs/tutorial_robot          # ~20 s: test IRL loss 4223.5 -> 228.5
    python examples/mbirl_own_robot.py --quick --out /tmp/robot           # a few seconds (what the tests run)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import mbirl
from mbirl.data.demos import save_keypoint_demos
from mbirl.experiments.kuka_irl import MBIRLRunConfig, prepare_run

URDF = Path(__file__).resolve().parent / "assets" / "arm3.urdf"
KEYPOINTS = ["link3", "tip"]  # the links whose origins are the keypoints (elbow and fingertip)


class TerminalWeightedCost(mbirl.KeypointCost):
    """Your own cost: squared distance to the goal per keypoint coordinate, weighted by learnable ``w_d`` and by a
    learnable preference for the end of the trajectory, ``exp(beta t / T)``."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.log_w = torch.nn.Parameter(torch.zeros(dim))
        self.beta = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:  # z (B, T, D), goal (B, D)
        T = z.shape[1]
        time_weight = torch.exp(self.beta * torch.linspace(0, 1, T, dtype=z.dtype))  # (T,)
        err = (z - goal[:, None]) ** 2 * torch.exp(self.log_w)  # (B, T, D)
        return (time_weight[None, :, None] * err).mean(dim=(1, 2))

    def weights_table(self) -> torch.Tensor:
        return torch.exp(self.log_w).detach()


def make_demos(robot: mbirl.KeypointRobot, n: int, horizon: int, seed: int) -> list[mbirl.KeypointTrajectory]:
    """Demonstrations: smooth joint-space motions from a rest pose to random reachable configurations."""
    rng = np.random.default_rng(seed)
    q0 = torch.tensor([0.0, -0.6, 1.2])
    demos = []
    for _ in range(n):
        q_goal = q0 + torch.as_tensor(rng.uniform(-0.5, 0.5, 3), dtype=torch.float32)
        s = torch.linspace(0, 1, horizon)[:, None]
        q = q0 + (3 * s**2 - 2 * s**3) * (q_goal - q0)  # ease in, ease out
        with torch.no_grad():
            z = robot.keypoints(robot.clip(q))
        demos.append(mbirl.KeypointTrajectory(start_q=q0.numpy(), keypoints=z.numpy(), q=q.numpy()))
    return demos


def main(out: Path, quick: bool = False) -> dict:
    robot = mbirl.KeypointRobot(URDF, KEYPOINTS, name="arm3")
    demos_path = out / "demos.npz"
    out.mkdir(parents=True, exist_ok=True)
    save_keypoint_demos(demos_path, make_demos(robot, 6, horizon=10, seed=0))

    # The run's configuration names the robot and the data; the cost is yours, passed in ready-made.
    cfg = MBIRLRunConfig(demos=str(demos_path), urdf=str(URDF), keypoint_links=",".join(KEYPOINTS),
                         train=(0, 4), test=(4, 6), outer_iters=2 if quick else 30)
    prep = prepare_run(cfg)
    cost = TerminalWeightedCost(dim=3 * robot.n_keypoints)
    prep.learner = mbirl.MBIRL(cost, prep.dynamics, prep.train, prep.test, cfg.trainer)
    metrics = mbirl.run_mbirl(cfg, out / "run", prepared=prep, progress=not quick, figures=not quick)
    print(f"recorded as {metrics['method']}: test IRL loss {metrics['irl_loss_test'][0]:.1f} -> "
          f"{metrics['final_test_irl_loss']:.1f}")

    # Load the finished run back: its cost (pass an instance of your class) and the planner that acts with it.
    run = mbirl.load_run(out / "run", cost=TerminalWeightedCost(dim=3 * robot.n_keypoints))
    test = prep.test
    plan = run.policy.act(test.q0[0].numpy(), test.goal[0].numpy())
    print(f"planned {plan.shape[0]} joint steps; learned weights {run.cost.weights_table().numpy().round(2)}")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial_robot"))
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    args = parser.parse_args()
    main(args.out, quick=args.quick)
