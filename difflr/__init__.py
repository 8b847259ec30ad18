"""keras-difflr: differential learning rates for Keras 3.

Every layer or variable trains at its own multiple of one base learning rate,
like Caffe's `lr_mult`, on the TensorFlow, JAX and PyTorch backends.
"""

import sys

__version__ = "0.1.0"
"""The installed keras-difflr version, a string such as `"0.1.0"`."""
__all__ = [
    "LRFindResult", "LRMultiplier", "callbacks", "discriminative", "fine_tune",
    "groups", "layers", "layerwise_decay", "lora_plus", "lr_find", "no_decay",
    "plot", "schedules", "summary",
    "__version__",
]



def _starting_cli():
    """Whether this import is `python -m difflr` importing its own package.

    Then Keras is left out, so that `--help` answers at once and a missing
    backend is explained; `difflr/__main__.py` imports the rest once it has
    parsed its arguments. `sys.argv[0]` is "-m" while the package of any
    module run with `-m` is imported, so the command line must name difflr.
    """
    if sys.argv[:1] != ["-m"]:
        return False
    argv = list(getattr(sys, "orig_argv", []))
    at = argv.index("-m") if "-m" in argv else -1
    return at > 0 and argv[at + 1:at + 2] == ["difflr"]


if not _starting_cli():
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
