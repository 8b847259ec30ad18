"""`python -m difflr`: a light parser, and a missing backend explained."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from difflr import __main__ as cli_main

MAIN = pathlib.Path(cli_main.__file__)


def test_help_imports_nothing_heavy():
    # `python -m difflr` imports the package first (`difflr/__init__.py`
    # leaves Keras out then): `--help` must not import Keras or a backend.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "difflr", "--help"],
                            capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"keras", "tensorflow", "jax", "torch"}, sorted(imported)
    for text in ("check", "demo", "KERAS_BACKEND", "keras.json"):
        assert text in result.stdout


def test_configured_backend_follows_keras(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert cli_main.configured_backend()[0] == "tensorflow"  # Keras's default
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    backend, source = cli_main.configured_backend()
    assert backend == "torch" and str(tmp_path / "keras.json") in source
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the variable wins
    assert cli_main.configured_backend() == ("jax", "KERAS_BACKEND is set")


def test_missing_backend_names_backend_variable_and_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    error = ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
    message = cli_main.backend_problem(error)
    assert "trying to use the tensorflow backend (KERAS_BACKEND is set)" in message
    assert "tensorflow is not installed" in message
    assert 'pip install "keras-difflr[tensorflow]"' in message
    assert "export KERAS_BACKEND=" in message
    assert str(tmp_path / "keras.json") in message
    # Not about a backend: left to the usual traceback.
    assert cli_main.backend_problem(ModuleNotFoundError("x", name="sklearn")) is None


def test_main_reports_a_missing_backend_instead_of_a_traceback(monkeypatch, capsys):
    def check_without_backend(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.setattr(cli_main, "_check", check_without_backend)
    assert cli_main.main(["check"]) == 1
    err = capsys.readouterr().err
    assert "trying to use the torch backend" in err
    assert 'pip install "keras-difflr[torch]"' in err


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_unimportable_backend_module_in_a_subprocess(backend, tmp_path):
    # `python -m difflr check` in a process where the backend's module
    # cannot be imported, as on a machine without it (a sitecustomize blocks
    # it before anything else runs).
    (tmp_path / "sitecustomize.py").write_text(f"""
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {backend!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
""")
    env = {"KERAS_BACKEND": backend, "KERAS_HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{MAIN.parent.parent}"}
    result = subprocess.run([sys.executable, "-m", "difflr", "check"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stderr
    assert f"trying to use the {backend} backend" in result.stderr
    assert f'pip install "keras-difflr[{backend}]"' in result.stderr
    assert "Traceback" not in result.stderr


def test_importing_difflr_without_its_backend_explains(tmp_path):
    # `import difflr` in a script, where the backend's module is missing.
    code = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "jax":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
import difflr
"""
    env = {"KERAS_BACKEND": "jax", "KERAS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(MAIN.parent.parent)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 1
    assert "BackendMissing: difflr: Keras is trying to use the jax backend" in result.stderr
    assert 'pip install "keras-difflr[jax]"' in result.stderr


def test_a_package_run_with_dash_m_that_imports_difflr_gets_all_of_it(tmp_path):
    # `python -m mypkg.tool`: Python imports `mypkg` while `sys.argv[0]` is
    # still "-m"; difflr must leave Keras out only for `python -m difflr`.
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("import difflr\n")
    (package / "tool.py").write_text("import difflr\nprint('has', hasattr(difflr, 'LRMultiplier'))\n")
    env = {"KERAS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": f"{MAIN.parent.parent}:{tmp_path}",
           "KERAS_BACKEND": __import__("keras").backend.backend()}
    result = subprocess.run([sys.executable, "-m", "mypkg.tool"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "has True" in result.stdout
