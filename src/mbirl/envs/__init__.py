"""Environments: the URDF keypoint robot, the built-in robots and the KUKA iiwa keypoint tasks."""

from mbirl.envs.kuka import (
    REST_POSE,
    ROBOTS,
    default_kuka,
    generate_demos,
    generate_original_placing,
    original_kuka,
    robot_from_options,
)
from mbirl.envs.robot import KeypointRobot, KeypointSpec

__all__ = ["REST_POSE", "ROBOTS", "KeypointRobot", "KeypointSpec", "default_kuka", "generate_demos",
           "generate_original_placing", "original_kuka", "robot_from_options"]
