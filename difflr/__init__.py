"""keras-difflr: differential learning rates for Keras 3.

Every layer or variable trains at its own multiple of one base learning rate,
like Caffe's `lr_mult`, on the TensorFlow, JAX and PyTorch backends.
"""

from difflr import _keras_compat

_keras_compat.check_keras_version()

from difflr import layers  # noqa: E402
from difflr.lr_multiplier import LRMultiplier  # noqa: E402

__version__ = "0.1.0"
__all__ = ["LRMultiplier", "layers", "__version__"]
