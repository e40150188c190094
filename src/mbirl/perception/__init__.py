"""Perception: a self-supervised keypoint detector (spatial-softmax autoencoder), its training and evaluation."""

from mbirl.perception.detector import DetectorConfig, KeypointAutoencoder, SpatialSoftmax, images_to_tensor
from mbirl.perception.evaluate import MatchResult, lift_keypoints, match_keypoints
from mbirl.perception.train import DetectorTrainConfig, fit_detector, init_background
from mbirl.perception.trained import TrainedDetector

__all__ = ["DetectorConfig", "DetectorTrainConfig", "KeypointAutoencoder", "MatchResult", "SpatialSoftmax",
           "TrainedDetector", "fit_detector", "images_to_tensor", "init_background", "lift_keypoints",
           "match_keypoints"]
