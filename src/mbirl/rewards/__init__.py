"""Adversarial IRL reward networks (the AIRL discriminator with its reward and shaping, GAIL's) and a trained run's
learned reward as a frozen component that wraps any gymnasium environment (:mod:`mbirl.rewards.learned`)."""

from mbirl.rewards.discriminator import DISCRIMINATORS, AIRLDiscriminator, Discriminator, GAILDiscriminator
from mbirl.rewards.learned import TERMS, LearnedReward, LearnedRewardWrapper

__all__ = ["DISCRIMINATORS", "TERMS", "AIRLDiscriminator", "Discriminator", "GAILDiscriminator", "LearnedReward",
           "LearnedRewardWrapper"]
