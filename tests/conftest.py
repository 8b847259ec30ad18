"""Shared test helpers. The backend comes from KERAS_BACKEND (see run_tests.py)."""

import contextlib

import numpy as np
import pytest
import keras

# Tests marked backend_free run in one pass of run_tests.py.
from _backend_free import pytest_collection_modifyitems  # noqa: F401


def pytest_report_header(config):
    """The device the suite runs on, in the summary's header."""
    from difflr._machine import device_line

    return f"keras {keras.__version__}, {device_line()}"


@pytest.fixture(autouse=True)
def _seed_and_reset():
    """Every test starts from the same seeds and a clean Keras session."""
    keras.utils.set_random_seed(1234)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    # Without the garbage collection clear_session runs by default: it took
    # about half a second a test (tests that need it call gc.collect).
    keras.backend.clear_session(free_memory=False)


def backend():
    return keras.backend.backend()


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def assert_close(actual, expected, rtol=2e-5, atol=2e-6, what=""):
    np.testing.assert_allclose(
        to_numpy(actual), to_numpy(expected), rtol=rtol, atol=atol, err_msg=what
    )


def keras_hub_or_skip():
    """`keras_hub`, or a skip where it cannot be imported (it is not
    installed, or needs a newer Keras than the one under test).

    run_tests.py fails on this skip except under a Keras older than
    keras-hub supports (its EXPECTED_SKIPS): a missing install is a failure.
    """
    try:
        import keras_hub
    except Exception as e:  # an old Keras fails inside keras_hub's import
        pytest.skip(f"keras_hub cannot be imported under Keras {keras.__version__}: "
                    f"{type(e).__name__}: {e}")
    return keras_hub


@contextlib.contextmanager
def counting_updates(traces):
    """Appends to `traces` each time a variable's update runs in Python
    (TensorFlow and JAX): in a compiled step, each time it is traced."""
    from difflr._update import compiled

    original = compiled.CompiledUpdate._update

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    compiled.CompiledUpdate._update = counting
    try:
        yield
    finally:
        compiled.CompiledUpdate._update = original
