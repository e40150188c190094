"""Adversarial IRL reward networks: the AIRL discriminator (reward + shaping) and GAIL's."""

from mbirl.rewards.discriminator import DISCRIMINATORS, AIRLDiscriminator, Discriminator, GAILDiscriminator

__all__ = ["DISCRIMINATORS", "AIRLDiscriminator", "Discriminator", "GAILDiscriminator"]
