"""difflr on a Keras it does not know: a clear message, never a stack trace
from inside Keras. (CI also runs the suite on the oldest supported Keras.)"""

import re
import warnings

import pytest
import keras

from difflr import _keras_compat

OLDEST = re.escape(".".join(map(str, _keras_compat.OLDEST_KERAS)))
NEWEST = re.escape(".".join(map(str, _keras_compat.NEWEST_CHECKED_KERAS)))


def _check_with(monkeypatch, version, drop=None):
    monkeypatch.setattr(keras, "__version__", version)
    if drop is not None:
        for base in keras.optimizers.Optimizer.__mro__:
            if drop in vars(base):
                monkeypatch.delattr(base, drop)
    _keras_compat.check_keras_version()


def test_the_installed_keras_is_within_the_checked_range():
    version = _keras_compat._version_tuple(keras.__version__)
    assert _keras_compat.OLDEST_KERAS <= version
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if version[:2] <= _keras_compat.NEWEST_CHECKED_KERAS[:2]:
            _keras_compat.check_keras_version()  # silent


def test_an_older_keras_is_refused_with_the_fix(monkeypatch):
    assert (3, 8, 0) < _keras_compat.OLDEST_KERAS
    with pytest.raises(ImportError, match=rf"needs Keras >= {OLDEST}.*3\.8\.0.*pip install -U keras"):
        _check_with(monkeypatch, "3.8.0")


def test_a_newer_keras_with_the_hooks_warns_and_runs(monkeypatch):
    assert _keras_compat.NEWEST_CHECKED_KERAS[:2] < (4, 0)
    with pytest.warns(UserWarning, match=rf"checked against Keras up to {NEWEST}.*4\.0\.0"):
        _check_with(monkeypatch, "4.0.0")


def test_a_keras_without_the_hooks_is_refused_by_name(monkeypatch):
    with pytest.raises(ImportError, match=rf"\(_apply_weight_decay\) are gone.*{OLDEST} to {NEWEST}"):
        _check_with(monkeypatch, "4.1.0", drop="_apply_weight_decay")


@pytest.mark.backend_free
@pytest.mark.parametrize("version, expected", [
    ("3.12.0", (3, 12, 0)), ("3.15.1", (3, 15, 1)), ("3.16.0.dev2026", (3, 16, 0)),
    ("3.13.0rc1", (3, 13, 0)), ("4", (4, 0, 0)),
])
def test_version_strings_parse(version, expected):
    assert _keras_compat._version_tuple(version) == expected
