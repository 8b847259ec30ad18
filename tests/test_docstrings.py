"""Every Example in a public docstring runs, and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import difflr

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(difflr.__path__, "difflr.")
    if not any(part.startswith("_") for part in info.name.split(".")[1:])
    and not info.name.startswith("difflr.demo")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may save files (a plot)
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
