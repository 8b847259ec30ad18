"""run_tests.py (the README's test command) fails where a skip hides a
missing install, and where no test ran: checked on real pytest runs of small
test files, written here, outside the repository's tests."""

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import backend

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import run_tests  # noqa: E402

sys.path.remove(str(ROOT))


def _run(directory):
    """run_tests.py on `directory`, for this pass's backend only."""
    env = dict(os.environ, DIFFLR_BACKENDS=backend())
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_tests.py"), str(directory),
         "-p", "no:cacheprovider"],
        env=env, capture_output=True, text=True, cwd=directory)
    return done.returncode, done.stdout + done.stderr


def test_a_test_skipped_for_a_missing_module_fails_the_run(tmp_path):
    (tmp_path / "test_needs.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert 1 + 1 == 2\n\n"
        "def test_needs_a_dependency():\n"
        "    pytest.importorskip('difflr_missing_dependency')\n")
    code, output = _run(tmp_path)
    assert code == 1, output
    assert "FAILED: unexpected skips" in output
    assert "No module named 'difflr_missing_dependency'" in output
    assert "test_needs.py::test_needs_a_dependency" in output


def test_a_run_of_no_test_fails(tmp_path):
    (tmp_path / "test_empty.py").write_text("# no tests\n")
    code, output = _run(tmp_path)
    assert code == 1, output
    assert "FAILED: no tests ran" in output


def test_a_run_whose_skips_are_all_expected_passes(tmp_path):
    other = next(b for b in run_tests.BACKENDS if b != backend())
    (tmp_path / "test_other.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        f"@pytest.mark.skip(reason='runs in the {other} pass')\n"
        "def test_elsewhere():\n    pass\n")
    code, output = _run(tmp_path)
    assert code == 0, output
    assert "passed" in output


@pytest.mark.parametrize("reason,backend_name,keras,expected", [
    ("runs in the torch pass", "jax", (3, 15), True),
    ("runs in the torch pass", "torch", (3, 15), False),  # its own pass
    ("No module named 'regex'", "jax", (3, 15), False),
    ("keras_hub cannot be imported under Keras 3.12.0: ImportError: x",
     "torch", (3, 12), True),
    # A module not found is a missing install, on any Keras.
    ("keras_hub cannot be imported under Keras 3.12.0: ModuleNotFoundError: "
     "No module named 'regex'", "torch", (3, 12), False),
    ("keras_hub cannot be imported under Keras 3.15.1: ImportError: x",
     "torch", (3, 15), False),
])
def test_skips_are_classified_by_reason_backend_and_keras(reason, backend_name,
                                                          keras, expected):
    found, unexpected = run_tests._classify([("t", reason)], backend_name, keras)
    assert bool(found) == expected and bool(unexpected) != expected
