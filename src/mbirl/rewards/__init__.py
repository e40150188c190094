"""Adversarial IRL reward networks: the AIRL discriminator (reward + shaping) and GAIL's."""

from mbirl.rewards.discriminator import AIRLDiscriminator, Discriminator, GAILDiscriminator, make_discriminator

__all__ = ["AIRLDiscriminator", "Discriminator", "GAILDiscriminator", "make_discriminator"]
