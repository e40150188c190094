"""Adversarial IRL reward networks (the AIRL discriminator with its reward and shaping, GAIL's) and a trained run's
learned reward as a frozen component that wraps any gymnasium environment (:mod:`mbirl.rewards.learned`), and the
EPIC distance between rewards (:mod:`mbirl.rewards.epic`)."""

from mbirl.rewards.discriminator import DISCRIMINATORS, AIRLDiscriminator, Discriminator, GAILDiscriminator
from mbirl.rewards.epic import TRUE_REWARDS, EpicSamples, canonicalize, epic_distance
from mbirl.rewards.learned import TERMS, LearnedReward, LearnedRewardWrapper

__all__ = ["DISCRIMINATORS", "TERMS", "TRUE_REWARDS", "AIRLDiscriminator", "Discriminator", "EpicSamples",
           "GAILDiscriminator", "LearnedReward", "LearnedRewardWrapper", "canonicalize", "epic_distance"]
