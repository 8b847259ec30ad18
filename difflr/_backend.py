"""Which Keras backend is configured and installed, read without importing
Keras, and what to tell the user when Keras cannot import its backend."""

import importlib.util
import json
import os

# The module each Keras backend imports; the registry's package of that name
# installs it. Messages name that package rather than one of difflr's extras:
# it installs the same way wherever difflr came from (a clone, a wheel).
BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
# The registry's torch wheels for Linux carry CUDA (gigabytes).
TORCH_CPU = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def _keras_config_path():
    """Where Keras reads its settings: $KERAS_HOME/keras.json or ~/.keras."""
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras")
    return os.path.join(home, "keras.json")


def configured_backend():
    """The backend Keras will try to use, and where that choice comes from.

    Read as Keras reads it (the `KERAS_BACKEND` environment variable, else
    the `"backend"` entry of keras.json, else TensorFlow), without importing
    Keras.
    """
    backend = os.environ.get("KERAS_BACKEND")
    if backend:
        return backend, "KERAS_BACKEND is set"
    path = _keras_config_path()
    try:
        with open(path) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        backend = None
    if backend:
        return backend, f"\"backend\" in {path}; KERAS_BACKEND is not set"
    return "tensorflow", "Keras's default; KERAS_BACKEND is not set"


def installed_backends():
    """The backends whose module is installed (found, not imported)."""
    found = []
    for name, module in BACKENDS.items():
        try:
            if importlib.util.find_spec(module) is not None:
                found.append(name)
        except (ImportError, ValueError):
            pass
    return found


def backend_problem(error):
    """What to tell the user when importing Keras failed for want of a backend.

    Args:
        error: The `ImportError` that importing Keras (or difflr) raised.

    Returns:
        A message naming the backend Keras is trying to use and why, how to
        choose another and which package installs it; `None` if `error` is
        not about a backend's module.
    """
    missing = (getattr(error, "name", None) or "").split(".")[0]
    if missing not in BACKENDS.values() and missing != "jaxlib":
        return None
    backend, source = configured_backend()
    package = BACKENDS.get(backend, backend)
    others = [b for b in installed_backends() if b != backend]
    lines = [
        f"difflr: Keras is trying to use the {backend} backend ({source}), "
        f"but {missing} is not installed ({error}).",
        "",
        f"  Install it:          pip install {package}",
    ]
    if package == "torch":
        lines.append(f"    (CPU only: {TORCH_CPU})")
    if others:
        lines.append(f"  or use another one:  export KERAS_BACKEND={others[0]}"
                     f"   (installed: {', '.join(others)})")
    else:
        lines.append("  or install another:  pip install jax"
                     "   then: export KERAS_BACKEND=jax")
    lines += [
        "",
        "`export KERAS_BACKEND=...` holds for this shell; to keep a choice, "
        f"set \"backend\" in {_keras_config_path()}.",
    ]
    return "\n".join(lines)


def quiet_idle_tensorflow():
    """Keeps TensorFlow quiet in a process whose Keras backend is not
    TensorFlow, unless the user's environment says otherwise.

    Keras's `set_random_seed` seeds TensorFlow whenever it is installed, so
    JAX and PyTorch runs import it, and its import logs a page of start-up
    notes (oneDNN, CPU instructions) about ops those runs never execute.
    Call before anything imports TensorFlow; it changes this process's
    environment only.
    """
    if configured_backend()[0] == "tensorflow":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no info, no warnings
    # The oneDNN notice prints whatever the log level, unless oneDNN is off.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


class BackendMissing(ImportError):
    """Keras cannot import the backend it is configured for."""


def check_keras_imports():
    """Imports Keras, or raises `BackendMissing` with `backend_problem`'s
    message when the configured backend's module is not installed."""
    try:
        import keras  # noqa: F401
    except ModuleNotFoundError as error:
        message = backend_problem(error)
        if message is None:
            raise
        raise BackendMissing(message) from None
