"""What the imitation harness (:mod:`mbirl.experiments.imitation`) needs of a learner.

Every imitation algorithm (MAIRL / MGAIL, behaviour cloning, later GAIL / AIRL with PPO and DAC) is a class with the
members of :class:`ImitationLearner`; the harness owns everything else: the run directory, the evaluation schedule
and protocol, logging, checkpoints and ``--resume``. A learner's state must be complete (networks, optimisers,
buffers, RNG states, environment states) so that loading a checkpoint continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mbirl.experts.rollout import EpisodeResult, make_env, run_episodes

__all__ = ["EVAL_SEED", "ImitationLearner", "StepInfo", "evaluate_policy", "numpy_rng_state", "set_numpy_rng_state"]

EVAL_SEED = 1_000_000
"""Reset seed of the first evaluation episode during training (episode ``i`` resets with ``EVAL_SEED + i``): every
algorithm is evaluated on the same episodes."""


@dataclass
class StepInfo:
    """What one training iteration reports to the harness."""

    scalars: dict[str, float] = field(default_factory=dict)
    """logged as they are (TensorBoard tags: ``losses/...``, ``charts/...``)"""
    episode_returns: list[float] = field(default_factory=list)
    """environment returns of the training episodes that ended during the iteration"""


class ImitationLearner(Protocol):
    """A learner the harness can train, evaluate, checkpoint and resume.

    *Online* learners (MAIRL, GAIL, DAC) count their environment steps in :attr:`env_steps` and stop at the run's
    budget; *offline* ones (behaviour cloning) never act while training, keep ``env_steps`` at 0 and stop by their
    own rule (:meth:`finished`).
    """

    env_steps: int
    """environment steps taken by training so far (warm-up included, evaluation excluded)"""
    iteration: int
    """training iterations done (MAIRL: policy updates; BC: epochs)"""

    def iteration_step(self) -> StepInfo:
        """Run one training iteration."""
        ...

    def finished(self, env_steps: int) -> bool:
        """Whether training is over, given the run's environment-step budget ``env_steps``."""
        ...

    def progress(self, env_steps: int) -> tuple[int, int]:
        """``(done, total)`` of training in the learner's own unit (environment steps; BC: epochs), given the run's
        budget ``env_steps``; ``done`` is the step of the log rows and never decreases."""
        ...

    def describe(self) -> dict[str, Any]:
        """Algorithm-specific entries of the run's ``metrics.json`` (e.g. MAIRL's variant and forward model)."""
        ...

    def evaluate(self, episodes: int = 10, *, seed: int = EVAL_SEED) -> EpisodeResult:
        """Deterministic episodes of the policy being learnt on the true reward; episode ``i`` resets with
        ``seed + i``."""
        ...

    def act_deterministic(self, obs: np.ndarray) -> Any:
        """The deterministic action of the evaluated policy for one observation (an environment action)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors and JSON values); includes ``env_steps`` and
        ``iteration``."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        ...

    def load_policy(self, state: dict[str, Any]) -> None:
        """Load only what :meth:`evaluate` needs from a :meth:`state_dict`."""
        ...


def numpy_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy generator's state for a checkpoint: its 128-bit integers as strings (JSON readers may not keep big
    ints)."""
    state = dict(rng.bit_generator.state)
    return {**state, "state": {k: str(v) for k, v in state["state"].items()}}


def set_numpy_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore what :func:`numpy_rng_state` captured."""
    rng.bit_generator.state = {**state, "state": {k: int(v) for k, v in state["state"].items()}}


def evaluate_policy(act: Callable[[np.ndarray], Any], env_id: str, episodes: int, *, seed: int = EVAL_SEED,
                    render: bool = False) -> EpisodeResult:
    """The evaluation protocol every imitation learner shares: ``episodes`` deterministic episodes of ``act`` on
    the true reward in a fresh environment, reset seeds ``seed + i`` (so evaluations are comparable)."""
    env = make_env(env_id, render_mode="rgb_array" if render else None)
    try:
        return run_episodes(env, act, episodes, seed=seed, render=render)
    finally:
        env.close()
