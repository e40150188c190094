"""Expert training (Stable-Baselines3), exported safetensors policies and demonstration files."""

from mbirl.experts.demos import DemoStats, demo_stats, generate_expert_demos, normalized_return
from mbirl.experts.policy import ExpertPolicy, export_sb3_policy
from mbirl.experts.rollout import EpisodeResult, make_env, random_policy, run_episodes
from mbirl.experts.train import EXPERT_PRESETS, ExpertPreset, ExpertResult, load_expert, train_expert

__all__ = ["EXPERT_PRESETS", "DemoStats", "EpisodeResult", "ExpertPolicy", "ExpertPreset", "ExpertResult",
           "demo_stats", "export_sb3_policy", "generate_expert_demos", "load_expert", "make_env",
           "normalized_return", "random_policy", "run_episodes", "train_expert"]
