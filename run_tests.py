"""Runs the whole test suite once per Keras backend (jax, tensorflow, torch).

Keras picks its backend at import, so each backend gets its own pytest
process. Extra arguments go to pytest. Exits non-zero if any backend fails,
runs no test at all (pytest's exit code 5), or skips a test for a reason not
in `EXPECTED_SKIPS`: a skip that hides a missing install step (a test
dependency that does not import) is a failure, not a pass. The summary gives
each backend's skips, expected and unexpected.

`DIFFLR_BACKENDS=torch,jax` picks the backends (and their order).
`DIFFLR_JOBS` is how many passes run at a time: 2 by default (1 on a
one-core machine; the suite has no timed test), 1 to run them one after the
other. Side by side, they start in the order that ends soonest by each
pass's estimated time (`_start_order`), and each pass's output goes to a
temporary file and is printed whole, under its backend's header, when the
pass ends.

Tests marked `backend_free` (their result cannot depend on the backend) run
in each environment's first pass only (`DIFFLR_BACKEND_FREE_PASS`, set here
for every pass) and are skipped in the others; plain `pytest` runs them
always.

`DIFFLR_EXTRA_PYTHONS` adds other environments' passes (another Keras in a
virtualenv of its own) to the same run, sharing its `DIFFLR_JOBS`: a
space-separated list of interpreters, each optionally `=backend,...`
(every backend by default), e.g. `.venv-newest-keras/bin/python
.venv-oldest-keras/bin/python=torch` (what .ci/run does). One run keeps both
cores busy to its end, where environments run one after the other would
leave one idle while each ends on its last pass.

Each pass (its pytest process, and the processes its tests start) has a
persistent JAX compilation cache of its own, a temporary directory removed
when the pass ends (unless `JAX_COMPILATION_CACHE_DIR` is set): tests that
compile the same step compile it once (the JAX pass takes about a tenth
less time). Not one for the run: JAX writes its entries unlocked, and a
pass beside another could read one half-written (a warning, an error in a
test that turns warnings into errors).
"""

import collections
import concurrent.futures
import contextlib
import itertools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

BACKENDS = ("jax", "tensorflow", "torch")
_CHILD = "--pytest-child"  # (internal) run pytest here, recording skips


def _off(name):
    return lambda backend, keras, run: backend != name


def _backend_free_elsewhere(name):
    """A backend-free test skipped in this pass: only where the pass it
    names, `name`, is the first of this environment's run (where it ran)
    and not this one."""
    return lambda backend, keras, run: run[0] == name != backend


# The skips a run may have: (reason regex, when: (backend, Keras version as a
# tuple, the run's backends in order) -> bool, why it is expected). A skip
# whose reason matches no entry, or matches one outside its `when`, fails the
# backend. Add an entry only for a skip no install step can lift.
EXPECTED_SKIPS = [
    # tests/test_docs.py: doc blocks marked `<!-- not run: ... -->`; the
    # comment says why (a download, a long run) and which test runs it.
    (r"^<!-- not run", lambda b, k, r: True, "doc block marked not run"),
    # Tests marked backend_free (tests/_backend_free.py): run once an
    # environment, in its first pass.
    *[(rf"^backend-free: runs in the {name} pass$", _backend_free_elsewhere(name),
       f"backend_free: run in the {name} pass") for name in BACKENDS],
    # Backend-specific tests, skipped in the other backends' passes.
    *[(rf"^runs in the {name} pass$", _off(name), f"test_distribution: {name} only")
      for name in BACKENDS],
    (r"^TensorFlow custom loop$", _off("tensorflow"), "TensorFlow only"),
    (r"^JAX's training state$", _off("jax"), "JAX only"),
    (r"^JAX compiles each eager op", _off("jax"), "JAX only"),
    (r"^the fused torch update$", _off("torch"), "torch only"),
    (r"^torch\.compile is the torch backend's", _off("torch"), "torch only"),
    # Tests of one side of a Keras change, skipped on the other side.
    (r"^Keras >= 3\.16(\.0)? synchronises torch fit", lambda b, k, r: k >= (3, 16),
     "the refusal of unsynchronised torch fit, gone from Keras 3.16"),
    (r"^torch fit in a process group is refused before Keras 3\.16\b",
     lambda b, k, r: k < (3, 16), "synchronised torch fit, new in Keras 3.16"),
    (r"^Keras's Orbax checkpoints came in Keras 3\.13$", lambda b, k, r: k < (3, 13),
     "keras.callbacks.OrbaxCheckpoint, new in Keras 3.13"),
    # keras-hub 0.32 declares Keras >= 3.15: under an older Keras (the
    # oldest-Keras pass of .ci/run) its import may fail inside keras_hub
    # (it does not under 3.12 on torch today). Never a module not found: that
    # is a missing install, on any Keras.
    (r"^keras_hub cannot be imported under Keras [\d.]+\w*: (?!ModuleNotFoundError)",
     lambda b, k, r: k < (3, 15), "keras-hub 0.32 declares Keras >= 3.15"),
]


def _keras_version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _classify(skips, backend, keras, run=BACKENDS):
    """Splits [(nodeid, reason)] into expected and unexpected skips, in
    `backend`'s pass of a run of the backends `run` (in order)."""
    expected, unexpected = [], []
    for nodeid, reason in skips:
        ok = any(re.search(pattern, reason) and when(backend, keras, tuple(run))
                 for pattern, when, _ in EXPECTED_SKIPS)
        (expected if ok else unexpected).append((nodeid, reason))
    return expected, unexpected


class _SkipRecorder:
    """pytest plugin (in the child process): writes every skip's node id and
    reason, and the Keras version, to a JSON file at the end of the session."""

    def __init__(self, path):
        self.path = path

    def pytest_terminal_summary(self, terminalreporter):
        skips = []
        for report in terminalreporter.stats.get("skipped", []):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) \
                else str(report.longrepr)
            skips.append((report.nodeid, reason.removeprefix("Skipped: ")))
        keras = sys.modules.get("keras")
        with open(self.path, "w") as f:
            json.dump({"keras": getattr(keras, "__version__", "0"), "skips": skips}, f)


class _Pass(collections.namedtuple("_Pass", "python backend run")):
    """One pytest process: `backend` under the interpreter `python` (None:
    this one), whose environment's backends are `run`, in order (the first
    runs the backend-free tests)."""

    @property
    def label(self):
        if self.python is None:
            return self.backend
        return f"{self.backend}@{_environment_name(self.python)}"


def _environment_name(python):
    """`.venv-x` for `.venv-x/bin/python`, else the path as given."""
    parts = pathlib.PurePath(python).parts
    return parts[-3] if len(parts) >= 3 and parts[-2] in ("bin", "Scripts") else python


@contextlib.contextmanager
def _jax_cache(env):
    """Gives a pass a JAX compilation cache of its own (see above), unless
    `env` names one."""
    if "JAX_COMPILATION_CACHE_DIR" in env:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="difflr-jax-cache-") as cache:
        # Every compilation kept, however small or quick.
        env.update(JAX_COMPILATION_CACHE_DIR=cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        yield


def _run_pytest(one, pytest_args, output=None):
    """One pass's pytest process: (exit code, skip report or None). Its
    output goes to `output` (a file) if given, else to this process's."""
    env = dict(os.environ, KERAS_BACKEND=one.backend, TF_CPP_MIN_LOG_LEVEL="3",
               DIFFLR_BACKEND_FREE_PASS=one.run[0])
    # The run's, not the pass's: a run_tests.py that a test starts is a run
    # of its own (and the paths may be relative to here).
    env.pop("DIFFLR_EXTRA_PYTHONS", None)
    fd, path = tempfile.mkstemp(prefix="difflr-skips-", suffix=".json")
    os.close(fd)
    try:
        with _jax_cache(env):
            try:
                code = subprocess.call(
                    [one.python or sys.executable, os.path.abspath(__file__), _CHILD,
                     path, "-q", *pytest_args],
                    env=env, stdout=output, stderr=subprocess.STDOUT if output else None)
            except OSError as error:  # this pass fails; the others run on
                message = f"run_tests.py: {one.python} did not start: {error}\n"
                if output:
                    output.write(message.encode())
                else:
                    print(message, end="", flush=True)
                return 127, None
        with open(path) as f:
            text = f.read()
        return code, json.loads(text) if text else None
    finally:
        os.remove(path)


def _timed_pass(one, pytest_args, output=None):
    start = time.time()
    code, report = _run_pytest(one, pytest_args, output)
    return code, report, time.time() - start


# Seconds a pass takes on 2 cores beside another (2026-12-07, .ci/run), by
# label, else by backend: what the start order is planned with. The oldest
# Keras's torch pass takes twice the newest's.
_ESTIMATES = {"tensorflow": 500, "jax": 390, "torch": 250,
              "torch@.venv-oldest-keras": 490}


def _estimate(one):
    return _ESTIMATES.get(one.label, _ESTIMATES[one.backend])


def _start_order(passes, jobs):
    """The order to start `passes` in, each when one of `jobs` slots frees,
    that ends soonest by `_estimate`: heaviest first would end .ci/run's 7
    passes on 2 cores about 100 s later, the last pass alone. Tried
    exhaustively up to 8 passes (distinct orders only), heaviest first
    beyond."""
    order = sorted(passes, key=lambda one: -_estimate(one))
    if len(passes) > 8:
        return order

    def end(candidate):
        slots = [0] * jobs
        for one in candidate:
            slots[slots.index(min(slots))] += _estimate(one)
        return max(slots)

    # Of the orders that end soonest, the nearest to heaviest first (the
    # first of them in `permutations`), which is the safer if an estimate
    # is off: what starts last is short.
    distinct = {}
    for candidate in itertools.permutations(order):
        distinct.setdefault(tuple(map(_estimate, candidate)), candidate)
    return list(min(distinct.values(), key=end))


def _passes(passes, pytest_args, jobs):
    """Runs the passes, `jobs` at a time: {pass: (exit code, skip report,
    seconds)}. One at a time, a pass prints as it goes; side by side, each
    pass's output is kept in a temporary file and printed whole when the
    pass ends, so passes never interleave."""
    if min(jobs, len(passes)) <= 1:
        results = {}
        for one in passes:
            print(f"\n=== KERAS_BACKEND={one.label} ===", flush=True)
            results[one] = _timed_pass(one, pytest_args)
        return results
    print(f"\n{len(passes)} passes, {jobs} at a time (DIFFLR_JOBS={jobs}): each "
          "pass's output follows when it ends", flush=True)
    order = _start_order(passes, jobs)
    results, outputs = {}, {one: tempfile.TemporaryFile() for one in passes}
    try:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            running = {pool.submit(_timed_pass, one, pytest_args, outputs[one]): one
                       for one in order}
            for done in concurrent.futures.as_completed(running):
                one = running[done]
                results[one] = done.result()
                output = outputs[one]
                output.seek(0)
                print(f"\n=== KERAS_BACKEND={one.label} "
                      f"({results[one][2]:.0f} s) ===", flush=True)
                sys.stdout.write(output.read().decode(errors="replace"))
                sys.stdout.flush()
    finally:
        for output in outputs.values():
            output.close()
    return results


def _verdict(code, report, unexpected):
    if code == 5:
        return "FAILED: no tests ran"
    if code != 0:
        return f"FAILED (exit {code})"
    if report is None:
        return "FAILED: no skip report"
    return "FAILED: unexpected skips" if unexpected else "passed"


def _print_unexpected(backend, unexpected):
    by_reason = {}
    for nodeid, reason in unexpected:
        by_reason.setdefault(reason, []).append(nodeid)
    print(f"\n{backend}: skipped for a reason not in run_tests.EXPECTED_SKIPS "
          "(a missing test dependency?):")
    for reason, nodeids in by_reason.items():
        print(f"  [{len(nodeids)}] {reason}")
        for nodeid in nodeids[:5]:
            print(f"      {nodeid}")
        if len(nodeids) > 5:
            print(f"      ... and {len(nodeids) - 5} more")


def _backends(text, where):
    """A list of backends, checked: each of `BACKENDS` at most once (a pass
    listed twice would share its name, and so its result, with the other)."""
    backends = text.split(",")
    if any(b not in BACKENDS for b in backends) or len(set(backends)) < len(backends):
        sys.exit(f"run_tests.py: {where}={text!r}: give each of "
                 f"{', '.join(BACKENDS)} at most once, separated by commas")
    return tuple(backends)


def _all_passes():
    """This interpreter's passes (DIFFLR_BACKENDS), then those of each of
    DIFFLR_EXTRA_PYTHONS, checked."""
    run = _backends(os.environ.get("DIFFLR_BACKENDS", ",".join(BACKENDS)),
                    "DIFFLR_BACKENDS")
    passes = [_Pass(None, b, run) for b in run]
    for entry in os.environ.get("DIFFLR_EXTRA_PYTHONS", "").split():
        given, _, listed = entry.partition("=")
        where = f"DIFFLR_EXTRA_PYTHONS ({given})"
        run = _backends(listed or ",".join(BACKENDS), where)
        # A name is looked up as the shell would; a path is taken as given,
        # not resolved (a virtualenv's python is a link to its base's).
        python = shutil.which(given) if os.sep not in given else given
        if python is None or not (os.path.isfile(python) and os.access(python, os.X_OK)):
            sys.exit(f"run_tests.py: {where}: no interpreter there")
        python = os.path.abspath(python)
        added = [_Pass(python, b, run) for b in run]
        if python == os.path.abspath(sys.executable) or any(
                one.label == other.label for one in added for other in passes):
            sys.exit(f"run_tests.py: {where}: this interpreter, listed twice, or "
                     f"labelled as another ({added[0].label}): give each "
                     "environment a directory of its own name")
        passes += added
    return passes


def main(pytest_args):
    passes = _all_passes()
    jobs = int(os.environ.get("DIFFLR_JOBS", min(2, os.cpu_count() or 1)))
    results = _passes(passes, pytest_args, jobs)
    rows, failed = [], False
    for one in passes:
        code, report, seconds = results[one]
        keras = report["keras"] if report else "?"
        expected, unexpected = _classify(
            report["skips"] if report else [], one.backend, _keras_version(keras),
            one.run)
        verdict = _verdict(code, report, unexpected)
        failed |= verdict != "passed"
        rows.append((one.label, keras, verdict, len(expected), unexpected, seconds))
    width = max(11, *(len(row[0]) + 1 for row in rows))
    print("\n=== summary ===")
    print(f"{'backend':<{width}} {'keras':<22} {'result':<26} "
          f"{'skipped: expected':>17} {'unexpected':>10} {'time':>7}")
    for label, keras, verdict, n_expected, unexpected, seconds in rows:
        print(f"{label:<{width}} {keras:<22} {verdict:<26} {n_expected:>17} "
              f"{len(unexpected):>10} {seconds:5.0f} s")
    for label, _, _, _, unexpected, _ in rows:
        if unexpected:
            _print_unexpected(label, unexpected)
    return 1 if failed else 0


def _child(report_path, pytest_args):
    import pytest

    return pytest.main(pytest_args, plugins=[_SkipRecorder(report_path)])


if __name__ == "__main__":
    if sys.argv[1:2] == [_CHILD]:
        sys.exit(_child(sys.argv[2], sys.argv[3:]))
    sys.exit(main(sys.argv[1:]))
