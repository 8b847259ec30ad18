"""The accelerator checks, in one command and one report.

    python benchmarks/accelerator.py --out DIR           # on a GPU or TPU machine
    python benchmarks/accelerator.py --quick --out DIR   # a tiny version, to check it runs

For each backend, in processes of its own (Keras picks its backend at
import), on whatever device the backend computes on:

1. the device: backend, kind ("cuda:0 NVIDIA A100-SXM4-40GB"), count;
2. the suite's device-sensitive tests (`DEVICE_TESTS`): no host sync per
   step (with the counts, per update path, of what the plain optimizer and
   difflr wait for), the fast paths, torch.compile, distribution, mixed
   precision, every optimizer against a copy per variable;
3. the step time, the first call and the optimizer memory
   (`benchmarks/step_time.py`, `first_call.py`, `memory.py`).

It writes DIR/accelerator.md (the report, with the device line) and
DIR/accelerator.json, and exits non-zero if a test failed. `--quick` runs a
few of the tests and the benchmarks' tiny versions: its timings mean
nothing. A full run takes about as long as the suite on the three backends
plus the three benchmarks (on a 2-core CPU, well over an hour).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _common as c  # noqa: E402
import first_call  # noqa: E402
import memory  # noqa: E402
import step_time  # noqa: E402

# (pytest argument, what it checks where the device matters).
DEVICE_TESTS = [
    ("tests/test_host_sync.py", "no host synchronisation per training step"),
    ("tests/test_fast_paths.py", "the fast paths: what a step executes"),
    ("tests/test_torch_compile.py", "the update under torch.compile"),
    ("tests/test_distribution.py", "distribution (simulated devices on the host)"),
    ("tests/test_contract.py", "every optimizer against a copy per variable"),
    ("tests/test_fit.py::test_reduce_lr_on_plateau_and_mixed_precision_keep_the_ratios",
     "mixed_float16 in fit"),
    ("tests/test_hostile_inputs.py::test_mixed_bfloat16_fit_scales_each_variable",
     "mixed_bfloat16 in fit"),
    ("tests/test_hostile_inputs.py::test_low_precision_variables_match_a_copy_per_variable",
     "float16 and bfloat16 variables"),
]
QUICK_TESTS = [
    ("tests/test_host_sync.py::"
     "test_the_recorder_sees_what_waits_for_the_device_and_nothing_else",
     "the host-sync recorder"),
    ("tests/test_host_sync.py::test_steady_steps_wait_for_the_device_no_more_than_plain"
     "[Adam-fit]", "no host synchronisation per training step (Adam, fit)"),
    ("tests/test_hostile_inputs.py::test_mixed_bfloat16_fit_scales_each_variable",
     "mixed_bfloat16 in fit"),
]
BENCHMARKS = {"step_time": step_time, "first_call": first_call, "memory": memory}


def run_tests(backend, tests, out):
    """Runs pytest on `tests` with `backend`; returns its JUnit counts, the
    failed tests, the seconds taken and the host-sync counts."""
    junit = os.path.join(out, f"tests-{backend}.xml")
    syncs = os.path.join(out, f"host-sync-{backend}.json")
    for path in (junit, syncs):
        if os.path.exists(path):
            os.remove(path)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               DIFFLR_HOST_SYNC_REPORT=syncs)
    command = [sys.executable, "-m", "pytest", *[t for t, _ in tests], "-q",
               "-p", "no:cacheprovider", f"--junitxml={junit}"]
    began = time.time()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    result = {"command": " ".join(command[1:]), "seconds": time.time() - began,
              "exit": done.returncode, **_junit(junit)}
    if done.returncode not in (0, 1):  # 1: tests failed; else pytest itself did
        result["output"] = done.stdout[-3000:] + done.stderr[-3000:]
    if os.path.exists(syncs):
        with open(syncs) as f:
            result["host_syncs"] = json.load(f)["runs"]
    return result


def _junit(path):
    counts = {"passed": 0, "failed": [], "skipped": 0}
    if not os.path.exists(path):
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"].append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def run_benchmarks(backend, quick):
    """Runs each of `BENCHMARKS` on `backend`; returns {name: {options,
    results}} (or {"error": ...} for one that failed)."""
    found = {}
    for name, module in BENCHMARKS.items():
        options = c.options_for(module.DEFAULTS, quick)
        try:
            results = c.run_per_backend(module.__file__, [backend], options)
        except RuntimeError as e:
            found[name] = {"error": str(e)}
            continue
        found[name] = {"options": options, "results": results}
    return found


def device_of(backend):
    """The device `backend` computes on (`_common.device`), from a process
    of its own."""
    code = "import json, _common; print(json.dumps(_common.device()))"
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# The report.

def render(found):
    """The Markdown report of a run (`found`, as written to the JSON)."""
    m = found["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    parts = [
        "# Accelerator checks\n",
        f"`{found['command']}`, {found['started']}, {found['seconds'] / 60:.0f} "
        f"minutes; host: {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"{versions}.\n",
    ]
    if found["quick"]:
        parts.append("> **Quick run** (`--quick`): a few tests and the benchmarks' tiny "
                     "versions, to check the command. Its timings mean nothing.\n")
    parts += ["## Devices\n", "| backend | device | devices |", "|---|---|---:|"]
    parts += [f"| {b} | {r['device']['kind']} | {r['device']['count']} |"
              for b, r in found["backends"].items()]
    parts += [""] + [f"- {line}" for line in c.device_lines(
        {b: r["device"] for b, r in found["backends"].items()}).splitlines()]
    parts += ["", "## Device-sensitive tests\n", _tests_table(found),
              "## Host synchronisation per step\n", HOST_SYNCS, _syncs_table(found)]
    for name, module in BENCHMARKS.items():
        parts.append(f"## {TITLES[name]}\n")
        parts.append(_benchmark(name, module, found))
    return "\n".join(parts)


TITLES = {"step_time": "Step time of `model.fit`",
          "first_call": "The first `fit` call", "memory": "Optimizer memory"}

HOST_SYNCS = """Counted by `tests/test_host_sync.py` over its steady steps (after the
first; after `set_multipliers` where the case says so), per step. torch:
device-to-host reads / host-to-device copies / data-dependent shapes, for
the plain optimizer and for difflr (whose own must be none; the test fails
otherwise), and on CUDA what `torch.cuda.set_sync_debug_mode` reported.
JAX and TensorFlow compile the step: the count is of difflr's Python calls
during steady steps (none: nothing of difflr runs there), and on JAX the
steps ran under `jax.transfer_guard`.
"""


def _tests_table(found):
    lines = ["| backend | passed | failed | skipped | minutes |",
             "|---|---:|---:|---:|---:|"]
    failed = []
    for backend, r in found["backends"].items():
        t = r["tests"]
        lines.append(f"| {backend} | {t['passed']} | {len(t['failed'])} | {t['skipped']} "
                     f"| {t['seconds'] / 60:.1f} |")
        failed += [f"- {backend}: `{name}`" for name in t["failed"]]
        if "output" in t:
            failed.append(f"- {backend}: pytest exited {t['exit']}:\n\n```\n"
                          f"{t['output']}\n```")
    tests = "\n".join(f"- `{test}`: {why}" for test, why in found["tests"])
    return ("\n".join(lines) + "\n\n" + ("Failed:\n\n" + "\n".join(failed) + "\n\n"
                                         if failed else "")
            + f"The tests:\n\n{tests}\n")


_KINDS = ("device-to-host read", "host-to-device copy", "data-dependent shape")
_OWN = "difflr's own"


def _syncs_table(found):
    lines = ["| backend | case | loop | plain | difflr | difflr's own | CUDA syncs "
             "plain / difflr | difflr calls |", "|---|---|---|---|---|---:|---|---:|"]
    for backend, r in found["backends"].items():
        for run in r["tests"].get("host_syncs", []):
            per_step = ["n/a", "n/a"]
            if backend == "torch":
                per_step = [" / ".join(f"{run[v].get(k, 0) / run['steps']:g}"
                                       for k in _KINDS) for v in ("plain", "difflr")]
            cuda = " / ".join(str(n) for n in run["cuda syncs"])
            lines.append(f"| {backend} | {run['case']} | {run['loop']} | {per_step[0]} | "
                         f"{per_step[1]} | {len(run[_OWN])} | {cuda} | "
                         f"{run['difflr calls']} |")
    return "\n".join(lines) + "\n"


def _benchmark(name, module, found):
    per_backend, options = {}, None
    errors = []
    for backend, r in found["backends"].items():
        run = r.get("benchmarks", {}).get(name)
        if run is None:
            continue
        if "error" in run:
            errors.append(f"- {backend}: {run['error']}")
            continue
        options = run["options"]
        per_backend.update(run["results"])
    text = module.report(per_backend, options) if per_backend else "(not run)\n"
    return text + ("\nFailed:\n\n" + "\n".join(errors) + "\n" if errors else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where the report goes")
    parser.add_argument("--backends", default=",".join(c.BACKENDS))
    parser.add_argument("--quick", action="store_true",
                        help="a few tests and tiny benchmarks, to check the command")
    parser.add_argument("--no-benchmarks", action="store_true",
                        help="the device and the tests only")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tests = QUICK_TESTS if args.quick else DEVICE_TESTS
    found = {"command": "python benchmarks/accelerator.py " + " ".join(sys.argv[1:]),
             "started": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick,
             "machine": c.machine(), "tests": tests, "backends": {}}
    began = time.time()
    for backend in args.backends.split(","):
        r = found["backends"][backend] = {"device": device_of(backend)}
        print(f"[{time.strftime('%H:%M:%S')}] {c.device_lines({backend: r['device']})}",
              flush=True)
        r["tests"] = run_tests(backend, tests, args.out)
        print(f"  tests: {r['tests']['passed']} passed, {len(r['tests']['failed'])} "
              f"failed, {r['tests']['skipped']} skipped", flush=True)
        if not args.no_benchmarks:
            r["benchmarks"] = run_benchmarks(backend, args.quick)
    found["seconds"] = time.time() - began
    with open(os.path.join(args.out, "accelerator.json"), "w") as f:
        json.dump(found, f, indent=1)
    with open(os.path.join(args.out, "accelerator.md"), "w") as f:
        f.write(render(found))
    print(f"wrote {os.path.join(args.out, 'accelerator.md')}")
    failed = any(r["tests"]["failed"] or r["tests"]["exit"] not in (0, 5)
                 for r in found["backends"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
