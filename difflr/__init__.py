"""keras-difflr: differential learning rates for Keras 3.

Every layer or variable trains at its own multiple of one base learning rate,
like Caffe's `lr_mult`, on the TensorFlow, JAX and PyTorch backends.
"""

import sys

__version__ = "0.1.0"
__all__ = [
    "LRFindResult", "LRMultiplier", "callbacks", "discriminative", "fine_tune",
    "groups", "layers", "layerwise_decay", "lora_plus", "lr_find", "no_decay",
    "plot", "schedules", "summary",
    "__version__",
]

# `python -m difflr` imports this package before `difflr/__main__.py` runs,
# with `sys.argv[0] == "-m"` meanwhile: Keras is left out then, so that
# `--help` answers at once and a missing backend is explained, and
# `__main__` imports the rest once it has parsed its arguments.
if sys.argv[:1] != ["-m"]:
    from difflr import _backend

    _backend.check_keras_imports()  # a missing backend, explained

    from difflr import _keras_compat

    _keras_compat.check_keras_version()

    from difflr import callbacks  # noqa: E402
    from difflr import layers  # noqa: E402
    from difflr import schedules  # noqa: E402
    from difflr.fine_tuning import fine_tune  # noqa: E402
    from difflr.grouping import groups  # noqa: E402
    from difflr.inspection import plot  # noqa: E402
    from difflr.inspection import summary  # noqa: E402
    from difflr.lr_finder import LRFindResult  # noqa: E402
    from difflr.lr_finder import lr_find  # noqa: E402
    from difflr.lr_multiplier import LRMultiplier  # noqa: E402
    from difflr.recipes import discriminative  # noqa: E402
    from difflr.recipes import layerwise_decay  # noqa: E402
    from difflr.recipes import lora_plus  # noqa: E402
    from difflr.recipes import no_decay  # noqa: E402
