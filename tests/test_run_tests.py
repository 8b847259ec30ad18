"""run_tests.py (the README's test command) fails where a skip hides a
missing install, and where no test ran; runs its passes side by side, each
one's output whole; runs backend-free tests once: checked on real pytest runs
of small test files, written here, outside the repository's tests. (Those
files import no Keras: a backend's name is only a label to them.)"""

import itertools
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import backend

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import run_tests  # noqa: E402

sys.path.remove(str(ROOT))

# Nothing here runs Keras: one pass runs them (tests/_backend_free.py).
pytestmark = pytest.mark.backend_free


def _run(directory, backends=None, jobs=1, **env):
    """run_tests.py on `directory`, for `backends` (this pass's backend
    only by default), `jobs` passes at a time, with `env` added to its
    environment (a value None: removed)."""
    env = dict(os.environ, DIFFLR_BACKENDS=",".join(backends or [backend()]),
               DIFFLR_JOBS=str(jobs), **env)
    env = {k: v for k, v in env.items() if v is not None}
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_tests.py"), str(directory),
         "-p", "no:cacheprovider"],
        env=env, capture_output=True, text=True, cwd=directory)
    return done.returncode, done.stdout + done.stderr


def _summary_row(output, backend_name):
    """The summary's row for `backend_name`: (result, expected skips)."""
    summary = output[output.index("=== summary ==="):]
    row = re.search(rf"^{re.escape(backend_name)} +\S+ +(.+?) +(\d+) +(\d+) +\d+ s$",
                    summary, re.M)
    assert row, summary
    return row.group(1), int(row.group(2))


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


def test_a_missing_module_fails_every_pass_side_by_side(tmp_path):
    (tmp_path / "test_needs.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        "def test_needs_a_dependency():\n"
        "    pytest.importorskip('difflr_missing_dependency')\n")
    code, output = _run(tmp_path, ["jax", "torch"], jobs=2)
    assert code == 1, output
    for name in ("jax", "torch"):
        assert _summary_row(output, name)[0] == "FAILED: unexpected skips"
    assert output.count("No module named 'difflr_missing_dependency'") >= 2


def _passes_printed(output):
    """{backend: its pass's output, from its header to the next}."""
    parts = re.split(r"^=== (KERAS_BACKEND=[\w@.-]+|summary)\b.*===$", output,
                     flags=re.M)
    return {name.split("=")[1]: text for name, text in zip(parts[1::2], parts[2::2])
            if name != "summary"}


def test_passes_side_by_side_pass_fail_and_print_whole(tmp_path):
    # Each pass's test says it started, then waits for the other pass's: a
    # barrier that only passes running side by side get through (not a
    # timing: it holds however slow the machine). The torch pass fails.
    (tmp_path / "test_barrier.py").write_text(textwrap.dedent(f"""
        import os, time

        def test_meets_the_other_pass():
            name = os.environ["KERAS_BACKEND"]
            other = {{"jax": "torch", "torch": "jax"}}[name]
            open(os.path.join({str(tmp_path)!r}, name), "w").close()
            deadline = time.time() + 300
            while not os.path.exists(os.path.join({str(tmp_path)!r}, other)):
                assert time.time() < deadline, "the other pass never started"
                time.sleep(0.1)

        def test_fails_on_torch():
            assert os.environ["KERAS_BACKEND"] != "torch", "torch's failure"
        """))
    code, output = _run(tmp_path, ["jax", "torch"], jobs=2)
    assert code == 1, output
    assert _summary_row(output, "jax")[0] == "passed"
    assert _summary_row(output, "torch")[0] == "FAILED (exit 1)"
    # Each pass's output whole, under its own header.
    printed = _passes_printed(output)
    assert sorted(printed) == ["jax", "torch"], output
    assert "torch's failure" in printed["torch"] and "1 failed, 1 passed" in printed["torch"]
    assert "torch's failure" not in printed["jax"] and "2 passed" in printed["jax"]
    assert output.count("=== KERAS_BACKEND=") == 2


_BACKEND_FREE = {
    "pytest.ini": """
        [pytest]
        addopts = -ra --strict-markers
        markers =
            backend_free: the result cannot depend on the backend
        """,
    # The repository's own hook (tests/conftest.py imports it the same way).
    "conftest.py": f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from _backend_free import pytest_collection_modifyitems
        """,
    "test_free.py": """
        import os
        import pytest

        def test_everywhere():
            pass

        @pytest.mark.backend_free
        def test_once():
            open(os.environ["KERAS_BACKEND"] + ".ran", "w").close()
        """,
}


def _backend_free_tree(directory):
    for name, text in _BACKEND_FREE.items():
        (directory / name).write_text(textwrap.dedent(text))


@pytest.mark.parametrize("backends,jobs", [
    (["jax", "tensorflow", "torch"], 2),
    (["torch", "jax"], 1),  # run first, torch's pass runs them
    (["torch"], 2),  # the oldest-Keras pass of .ci/run: torch only
])
def test_backend_free_tests_run_in_the_first_pass_only(tmp_path, backends, jobs):
    _backend_free_tree(tmp_path)
    code, output = _run(tmp_path, backends, jobs)
    assert code == 0, output
    assert sorted(p.name for p in tmp_path.glob("*.ran")) == [f"{backends[0]}.ran"]
    assert _summary_row(output, backends[0]) == ("passed", 0)
    for name in backends[1:]:
        assert _summary_row(output, name) == ("passed", 1)
    reason = f"backend-free: runs in the {backends[0]} pass"
    assert output.count(reason) == len(backends) - 1, output


def test_plain_pytest_runs_backend_free_tests(tmp_path):
    _backend_free_tree(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DIFFLR_BACKEND_FREE_PASS"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        env=dict(env, KERAS_BACKEND="torch"), capture_output=True, text=True,
        cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout and (tmp_path / "torch.ran").exists()


@pytest.mark.parametrize("backend_name,run,expected", [
    ("torch", ("jax", "tensorflow", "torch"), True),
    ("jax", ("jax", "tensorflow", "torch"), False),  # the pass it runs in
    ("torch", ("torch",), False),  # jax not in the run: it ran nowhere
    ("torch", ("tensorflow", "jax", "torch"), False),  # jax not the first
])
def test_a_backend_free_skip_is_expected_only_beside_the_pass_it_names(
        backend_name, run, expected):
    found, unexpected = run_tests._classify(
        [("t", "backend-free: runs in the jax pass")], backend_name, (3, 15), run)
    assert bool(found) == expected and bool(unexpected) != expected


@pytest.mark.parametrize("listed", ["jax,jax", "jax,mxnet"])
def test_a_backend_listed_twice_or_unknown_is_refused(tmp_path, listed):
    """Two passes of one name would share one result: a failure of the
    first could be lost behind the second."""
    (tmp_path / "test_one.py").write_text("def test_runs():\n    pass\n")
    env = dict(os.environ, DIFFLR_BACKENDS=listed)
    done = subprocess.run([sys.executable, str(ROOT / "run_tests.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"DIFFLR_BACKENDS='{listed}'" in done.stderr
    assert "=== KERAS_BACKEND" not in done.stdout


def test_a_backend_free_test_with_a_skip_mark_fails_the_run(tmp_path):
    """Skipped by its mark in the one pass it runs in, and as backend-free
    in the others, it would run nowhere while every pass passed."""
    _backend_free_tree(tmp_path)
    (tmp_path / "test_both.py").write_text(textwrap.dedent("""
        import os
        import pytest

        @pytest.mark.skipif(os.environ["KERAS_BACKEND"] != "torch", reason="torch only")
        def test_skip_mark_alone():  # (fine)
            pass

        @pytest.mark.backend_free
        @pytest.mark.skipif(os.environ["KERAS_BACKEND"] != "torch", reason="torch only")
        def test_nowhere():
            pass
        """))
    code, output = _run(tmp_path, ["jax", "torch"], jobs=1)
    assert code == 1, output
    assert "test_both.py::test_nowhere is marked backend_free and skip/skipif" in output
    assert "test_skip_mark_alone is marked" not in output
    assert _summary_row(output, "jax")[0].startswith("FAILED")


def _other_python(directory, name):
    """`directory/name/bin/python`: a script that runs this interpreter
    (also where it is a virtualenv's: a link to one would start its base)
    with DIFFLR_TEST_ENVIRONMENT set to `name`."""
    python = directory / name / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nDIFFLR_TEST_ENVIRONMENT={name} exec '
                      f'"{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python


def test_extra_pythons_share_the_run_and_each_pass_counts(tmp_path):
    """Another environment's passes join the run (.ci/run's oldest and
    newest Keras): each pass is run by its own interpreter, printed under
    its label, judged on its own, and the environment runs its backend-free
    tests in its own first pass."""
    tests = tmp_path / "tests"
    tests.mkdir()
    _backend_free_tree(tests)
    (tests / "test_where.py").write_text(textwrap.dedent("""
        import os

        def test_fails_in_the_other_environment():
            where = os.environ.get("DIFFLR_TEST_ENVIRONMENT")
            assert where != "newest", "the newest's failure"

        def test_a_pass_is_not_told_the_runs_other_pythons():
            # A run_tests.py that a test starts is a run of its own.
            assert "DIFFLR_EXTRA_PYTHONS" not in os.environ
        """))
    newest, oldest = (_other_python(tmp_path, name) for name in ("newest", "oldest"))
    code, output = _run(tests, ["jax"], jobs=2,
                        DIFFLR_EXTRA_PYTHONS=f"{newest}=tensorflow,torch {oldest}=torch")
    assert code == 1, output
    assert _summary_row(output, "jax") == ("passed", 0)
    assert _summary_row(output, "tensorflow@newest")[0] == "FAILED (exit 1)"
    assert _summary_row(output, "torch@newest") == ("FAILED (exit 1)", 1)
    assert _summary_row(output, "torch@oldest") == ("passed", 0)
    printed = _passes_printed(output)
    assert sorted(printed) == ["jax", "tensorflow@newest", "torch@newest", "torch@oldest"]
    assert "the newest's failure" in printed["torch@newest"]
    assert "the newest's failure" not in printed["torch@oldest"]
    assert "1 failed, 2 passed" in printed["torch@newest"]
    # Backend-free: once in this environment (jax), once in each other one.
    assert sorted(p.name for p in tests.glob("*.ran")) == [
        "jax.ran", "tensorflow.ran", "torch.ran"]


@pytest.mark.parametrize("extra,complaint", [
    ("{this}", "this interpreter, listed twice"),
    ("{other} {other}=torch", "this interpreter, listed twice"),
    # One environment under two names, or two environments of one name.
    ("{other} {other}3", "labelled as another (jax@other)"),
    ("{missing}", "no interpreter there"),
    ("{directory}", "no interpreter there"),
    ("no-such-python-difflr", "no interpreter there"),
    ("{other}=torch,torch", "give each of jax, tensorflow, torch at most once"),
])
def test_an_extra_python_listed_twice_missing_or_with_bad_backends_is_refused(
        tmp_path, extra, complaint):
    (tmp_path / "test_one.py").write_text("def test_runs():\n    pass\n")
    other = _other_python(tmp_path, "other")
    (tmp_path / "other" / "bin" / "python3").symlink_to(other)
    extra = extra.format(this=sys.executable, other=other,
                         missing=tmp_path / "missing" / "bin" / "python",
                         directory=tmp_path / "other")
    code, output = _run(tmp_path, DIFFLR_EXTRA_PYTHONS=extra)
    assert code == 1, output
    assert "DIFFLR_EXTRA_PYTHONS" in output and complaint in output
    assert "=== KERAS_BACKEND" not in output


def test_each_pass_has_a_jax_cache_of_its_own_removed_at_its_end(tmp_path):
    """Of its own: JAX writes cache entries unlocked, and a pass could read
    one that a pass beside it was writing."""
    (tmp_path / "test_cache.py").write_text(textwrap.dedent(f"""
        import os

        def test_sees_the_cache():
            directory = os.environ["JAX_COMPILATION_CACHE_DIR"]
            assert os.path.isdir(directory)
            name = os.environ["KERAS_BACKEND"] + ".cache"
            with open(os.path.join({str(tmp_path)!r}, name), "w") as f:
                f.write(directory + " " + os.environ.get(
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "unset"))
        """))
    code, output = _run(tmp_path, ["jax", "torch"], jobs=2,
                        JAX_COMPILATION_CACHE_DIR=None,
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=None,
                        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=None)
    assert code == 0, output
    seen = [(tmp_path / f"{name}.cache").read_text().split() for name in ("jax", "torch")]
    assert seen[0][0] != seen[1][0], seen
    for directory, least in seen:
        assert least == "0" and not os.path.exists(directory)  # every compilation kept
    # One the caller set is used as it is (and its settings), and kept.
    (tmp_path / "mine").mkdir()
    code, output = _run(tmp_path, ["jax"], JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"),
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=None)
    assert code == 0, output
    assert (tmp_path / "jax.cache").read_text() == f"{tmp_path / 'mine'} unset"
    assert (tmp_path / "mine").is_dir()


def _ends(order, jobs):
    """When the last of `order` ends, each started in turn on the slot that
    frees first, taking its `run_tests._estimate` seconds."""
    slots = [0] * jobs
    for one in order:
        slots[slots.index(min(slots))] += run_tests._estimate(one)
    return max(slots)


def test_the_passes_start_in_the_order_that_ends_soonest():
    every = run_tests.BACKENDS
    ci = ([run_tests._Pass(None, b, every) for b in every]
          + [run_tests._Pass("newest", b, every) for b in every]
          + [run_tests._Pass(".venv-oldest-keras/bin/python", "torch", ("torch",))])
    order = run_tests._start_order(ci, 2)
    assert sorted(order, key=repr) == sorted(ci, key=repr)
    # The best split of the seven estimates over two cores, found by trying
    # every split: no order can end sooner, and this one ends then.
    seconds = [run_tests._estimate(one) for one in ci]
    best = min(max(sum(s for s, on in zip(seconds, split) if on),
                   sum(s for s, on in zip(seconds, split) if not on))
               for split in itertools.product([True, False], repeat=len(ci)))
    heaviest_first = sorted(ci, key=lambda one: -run_tests._estimate(one))
    assert _ends(order, 2) == best < _ends(heaviest_first, 2)
    # Where heaviest first is as good, it is kept.
    assert [one.backend for one in run_tests._start_order(ci[:3], 2)] == [
        "tensorflow", "jax", "torch"]


def test_side_by_side_the_passes_start_in_the_planned_order(tmp_path):
    """Listed torch first, torch's pass starts last of three on two slots
    (the shortest, `_start_order`): jax's and tensorflow's meet at a
    barrier, and torch's finds one of them ended. Started first, torch's
    would find neither (one of them waiting at the barrier for the other)."""
    (tmp_path / "test_order.py").write_text(textwrap.dedent(f"""
        import os, time

        def here(name):
            return os.path.join({str(tmp_path)!r}, name)

        def test_order():
            name = os.environ["KERAS_BACKEND"]
            if name == "torch":
                assert os.path.exists(here("jax.ended")) or os.path.exists(
                    here("tensorflow.ended")), "torch started before a pass ended"
                return
            other = {{"jax": "tensorflow", "tensorflow": "jax"}}[name]
            open(here(name + ".started"), "w").close()
            deadline = time.time() + 300
            while not os.path.exists(here(other + ".started")):
                assert time.time() < deadline, "the other pass never started"
                time.sleep(0.1)
            open(here(name + ".ended"), "w").close()
        """))
    code, output = _run(tmp_path, ["torch", "jax", "tensorflow"], jobs=2)
    assert code == 0, output


def test_an_interpreter_that_does_not_start_fails_its_passes_only(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_runs():\n    pass\n")
    broken = _other_python(tmp_path, "broken")
    broken.write_text("#!/nonexistent/interpreter\n")  # exec fails: OSError
    code, output = _run(tmp_path, ["jax"], jobs=2,
                        DIFFLR_EXTRA_PYTHONS=f"{broken}=torch,tensorflow")
    assert code == 1, output
    assert _summary_row(output, "jax") == ("passed", 0)
    for name in ("torch@broken", "tensorflow@broken"):
        assert _summary_row(output, name)[0] == "FAILED (exit 127)"
    assert f"{broken} did not start" in output
