"""Demonstration files in and out (``.npz`` of named arrays, never pickles) and importers.

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

__all__ = [
    "KeypointDemoSet",
    "import_original_mbirl",
    "load_keypoint_demos",
    "load_trajectories",
    "save_keypoint_demos",
    "save_trajectories",
]
