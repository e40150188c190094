"""Learning checks on Pendulum-v1: a short run beats the random policy and its learned reward prefers the expert's
transitions; the full 50k-step run (slow) reaches the issue's target."""

from __future__ import annotations

import pytest
import torch

from mbirl.experiments.mairl_run import MAIRLRunConfig, build_trainer, run_mairl

DEMOS = "data/demos/Pendulum-v1.npz"


def test_short_pendulum_run_beats_random_and_reward_prefers_expert(tmp_path):
    m = run_mairl(MAIRLRunConfig(demos=DEMOS, env_steps=20_000, eval_every=20_000, seed=1),
                  tmp_path / "run", progress=False)
    # The untrained policy (action ~0) already scores ~0.15 (hanging still beats random torques), so the test
    # asks for a clear gain over it as well as over random. With this seed the default configuration reads
    # 0.84 at 20k steps (it first reaches 0.9 at 20-40k steps over seeds 0-5).
    assert m["final_mean_return"] > m["random_return"]
    first, last = m["eval"][0]["normalized_return"], m["final_normalized_return"]
    assert last >= 0.5 and last - first >= 0.3, m["eval"]

    trainer, demos = build_trainer(MAIRLRunConfig(demos=DEMOS, seed=1))
    from mbirl.reporting.checkpoint import load_checkpoint
    from mbirl.reporting.runs import checkpoint_stem

    state = load_checkpoint(checkpoint_stem(tmp_path / "run"))["trainer"]
    trainer.load_policy(state)
    trainer.buffer.load_state_dict(state["buffer"])
    with torch.no_grad():
        expert = trainer.expert_batch(2_000)
        warm = trainer.buffer.batch(torch.arange(1_000).numpy())  # the uniformly random warm-up transitions
        r_expert = trainer.reward_fn(expert.obs, expert.act, expert.next_obs, expert.done).mean()
        r_random = trainer.reward_fn(warm.obs, warm.act, warm.next_obs, warm.done).mean()
    assert float(r_expert) > float(r_random)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pendulum_reaches_the_target_within_50k_steps(tmp_path, seed):
    m = run_mairl(MAIRLRunConfig(demos=DEMOS, env_steps=50_000, seed=seed), tmp_path / "run", progress=False)
    assert m["final_normalized_return"] >= 0.9, m["eval"]
