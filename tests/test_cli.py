"""`python -m difflr`: a light parser, a missing backend explained, a quiet
TensorFlow, and install instructions that work before the release."""

import glob
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

from difflr import __main__ as cli_main
from difflr.demo import catalog

MAIN = pathlib.Path(cli_main.__file__)
ROOT = MAIN.parent.parent
HEAVY = {"keras", "tensorflow", "jax", "jaxlib", "torch"}


@pytest.mark.backend_free
@pytest.mark.parametrize("command", [[], ["check"], ["demo"]],
                         ids=["top", "check", "demo"])
def test_every_help_is_light_and_at_most_100_columns(command, monkeypatch, capsys):
    # `python -m difflr` imports the package first (`difflr/__init__.py`
    # leaves Keras out then): no `--help` may import Keras or a backend (a
    # backend takes seconds), however wide the terminal.
    monkeypatch.setenv("COLUMNS", "200")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "difflr", *command, "--help"],
        capture_output=True, text=True, check=True, env=dict(os.environ))
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in result.stderr.splitlines() if "|" in line}
    assert not imported & HEAVY, sorted(imported & HEAVY)
    # The whole help: what this process, Keras loaded, prints for it.
    with pytest.raises(SystemExit) as e:
        cli_main.main([*command, "--help"])
    assert e.value.code == 0 and result.stdout == capsys.readouterr().out
    widths = [len(line) for line in result.stdout.splitlines()]
    assert max(widths) <= 100, max(widths)
    expected = {"top": ("check", "demo", "KERAS_BACKEND", "keras.json"),
                "check": ("LRMultiplier", "lr * m"),
                "demo": catalog.NAMES + ("--out", "Table 7")}
    for text in expected[command[0] if command else "top"]:
        assert text in result.stdout


@pytest.mark.backend_free
def test_configured_backend_follows_keras(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert cli_main.configured_backend()[0] == "tensorflow"  # Keras's default
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    backend, source = cli_main.configured_backend()
    assert backend == "torch" and str(tmp_path / "keras.json") in source
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the variable wins
    assert cli_main.configured_backend() == ("jax", "KERAS_BACKEND is set")


@pytest.mark.backend_free
def test_missing_backend_names_backend_variable_and_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    error = ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
    message = cli_main.backend_problem(error)
    assert "trying to use the tensorflow backend (KERAS_BACKEND is set)" in message
    assert "tensorflow is not installed" in message
    # The backend's own package: it installs the same way wherever difflr
    # came from (a clone, a wheel; the registry has no keras-difflr yet).
    assert "Install it:          pip install tensorflow\n" in message
    assert "keras-difflr" not in message
    assert "export KERAS_BACKEND=" in message
    assert str(tmp_path / "keras.json") in message
    # Not about a backend: left to the usual traceback.
    assert cli_main.backend_problem(ModuleNotFoundError("x", name="sklearn")) is None


@pytest.mark.backend_free
def test_main_reports_a_missing_backend_instead_of_a_traceback(monkeypatch, capsys):
    def check_without_backend(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.setattr(cli_main, "_check", check_without_backend)
    assert cli_main.main(["check"]) == 1
    err = capsys.readouterr().err
    assert "trying to use the torch backend" in err
    assert "pip install torch\n" in err
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in err


@pytest.mark.backend_free
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
    assert f"Install it:          pip install {backend}\n" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.backend_free
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
    assert "Install it:          pip install jax\n" in result.stderr


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


@pytest.mark.backend_free
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_tensorflow_is_quieted_only_where_it_idles(backend, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", backend)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
        monkeypatch.delenv(name, raising=False)
    cli_main.quiet_idle_tensorflow()
    # On TensorFlow its notes are about the backend in use: left alone.
    idle = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
    assert {name: os.environ.get(name) for name in idle} == (
        dict.fromkeys(idle) if backend == "tensorflow" else idle)
    # The user's own settings win.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    cli_main.quiet_idle_tensorflow()
    assert (os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["TF_ENABLE_ONEDNN_OPTS"]) == ("0", "1")


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="runs in the jax pass")
def test_a_jax_demo_run_prints_no_tensorflow_lines(tmp_path):
    # Keras's set_random_seed imports TensorFlow when it is installed; the
    # demo's process must not pass on TensorFlow's start-up notes. The
    # reference: what importing TensorFlow prints here, in the same
    # environment (no TF_* variable set).
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
    env.update(KERAS_BACKEND="jax", KERAS_HOME=str(tmp_path))
    plain = subprocess.run([sys.executable, "-c", "import tensorflow"],
                           capture_output=True, text=True, env=env, check=True)
    notes = [re.sub(r"^\w\d{4} [\d:. ]+\d+ ", "", line)  # severity, time, thread
             for line in plain.stderr.splitlines() if line.strip()]
    # Which modules the demo's process imported, written as it exits.
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(tmp_path / 'modules')!r}, 'w')"
        ".write(' '.join(sys.modules)))\n")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    result = subprocess.run(
        [sys.executable, "-m", "difflr", "demo", "--arms", "scratch", "--no-control",
         "--seeds", "1", "--lrs", "0.01", "--epochs", "1", "--shots", "1"],
        capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "tensorflow" in (tmp_path / "modules").read_text().split()
    lines = result.stderr.splitlines()
    assert not [note for note in notes if any(note in line for line in lines)]
    # Only the demo's own progress lines.
    assert lines and all(line.startswith(("difflr demo ", "seed 0 ")) for line in lines), lines


def _install_lines():
    """Every line of the docs and the code that says `pip install`."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *map(pathlib.Path, sorted(glob.glob(str(ROOT / "difflr" / "**" / "*.py"),
                                                 recursive=True)))]
    return [(path.relative_to(ROOT), line) for path in files
            for line in path.read_text().splitlines() if "pip install" in line]


@pytest.mark.backend_free
def test_install_instructions_work_before_the_release():
    # keras-difflr is not on the registry yet: a line that installs it by
    # name must say it is for after the release; a clone (`.`) or a wheel
    # built from it works now.
    lines = _install_lines()
    by_name = [(path, line) for path, line in lines
               if re.search(r"pip install [^`]*\bkeras-difflr\b", line)]
    assert by_name  # the registry form, after the release
    assert all("after release" in line for _, line in by_name), by_name
    assert any('pip install -e ".[jax,demo]"' in line for path, line in lines
               if path.name == "README.md")


@pytest.mark.backend_free
def test_the_documented_wheel_is_the_one_pip_wheel_builds():
    # `python -m pip wheel --no-deps -w dist .` names the wheel after
    # pyproject.toml's project name and version.
    pyproject = (ROOT / "pyproject.toml").read_text()
    name = re.search(r'^name = "(.+)"', pyproject, re.M).group(1)
    version = re.search(r'^version = "(.+)"', pyproject, re.M).group(1)
    wheel = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    named = {match for _, line in _install_lines()
             for match in re.findall(r"[\w.-]+\.whl", line)}
    assert named == {wheel}
