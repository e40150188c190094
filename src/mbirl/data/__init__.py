"""Demonstration files in and out (``.npz`` of named arrays, never pickles) and importers: the original MBIRL
``.pt`` files, and (:mod:`mbirl.data.interop`) Stable-Baselines3, ``imitation``, Minari and D4RL-style files.

The visual data sets (rendered demonstrations with depth, exploration data) are :mod:`mbirl.data.visual`, not
imported here: it needs torch and the renderer.
"""

from mbirl.data.demos import (
    KeypointDemoSet,
    import_original_mbirl,
    load_keypoint_demos,
    load_trajectories,
    save_keypoint_demos,
    save_trajectories,
)
from mbirl.data.interop import FORMATS, export_minari, from_trajectory_objects, import_demos
from mbirl.data.shipped import shipped_demo_names, shipped_demos

__all__ = [
    "FORMATS",
    "KeypointDemoSet",
    "export_minari",
    "from_trajectory_objects",
    "import_demos",
    "import_original_mbirl",
    "load_keypoint_demos",
    "load_trajectories",
    "save_keypoint_demos",
    "save_trajectories",
    "shipped_demo_names",
    "shipped_demos",
]
