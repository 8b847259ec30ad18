"""Keras callbacks for fine-tuning with an `LRMultiplier`."""

from difflr.callbacks.gradual_unfreezing import GradualUnfreezing
from difflr.callbacks.learning_rate_logger import LearningRateLogger

__all__ = ["GradualUnfreezing", "LearningRateLogger"]
