"""Shared pieces of the benchmarks: models, the optimizers under comparison,
paired timing, and running a measurement once per Keras backend.

Keras picks its backend at import, so every measurement runs in a child
process per backend (`run_per_backend`); the child prints its result as JSON.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

BACKENDS = ("jax", "tensorflow", "torch")
_RESULT = "BENCHMARK-RESULT:"
_DEVICE = "BENCHMARK-DEVICE:"


# Running one measurement per backend.

def run_per_backend(script, backends, options, devices=None):
    """Runs `script --child <options>` once per backend; returns
    `{backend: result}` from the JSON each child prints last. With a dict
    `devices`, also fills it with `{backend: device}` (`device()`), the
    device each child computed on."""
    results = {}
    for backend in backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, script, "--child", "--options", json.dumps(options)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [l for l in done.stdout.splitlines() if l.startswith(_RESULT)]
        if done.returncode != 0 or not lines:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
            raise RuntimeError(f"{os.path.basename(script)} failed on {backend}")
        results[backend] = json.loads(lines[-1][len(_RESULT):])
        found = [l for l in done.stdout.splitlines() if l.startswith(_DEVICE)]
        if devices is not None and found:
            devices[backend] = json.loads(found[-1][len(_DEVICE):])
    return results


def device():
    """The device this process's Keras backend computes on: `{"backend",
    "kind", "count"}` (`difflr._machine.device`)."""
    from difflr._machine import device as found

    return found()


def device_lines(devices):
    """`{backend: device}` in words, one backend a line."""
    from difflr._machine import device_line

    return "\n".join(f"Device: {device_line(d)}." for d in devices.values())


def main(script, measure, report, defaults, description, backends=BACKENDS):
    """The command line of one benchmark script.

    `measure(options) -> result` runs inside a child process with one backend;
    `report(results, options) -> str` renders `{backend: result}` as Markdown.
    `defaults` are the options (rounds, steps, ...), overridable as
    `--set name=value`; `--quick` runs a tiny version to check the script.
    `backends` are those it runs on unless `--backends` says otherwise.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backends", default=",".join(backends))
    parser.add_argument("--quick", action="store_true",
                        help="tiny rounds, to check that the script runs")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override an option, e.g. --set rounds=3")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(_DEVICE + json.dumps(device()), flush=True)
        print(_RESULT + json.dumps(measure(json.loads(args.options))), flush=True)
        return 0
    options = options_for(defaults, args.quick, args.set)
    devices = {}
    results = run_per_backend(script, args.backends.split(","), options, devices)
    print(report(results, options))
    print(device_lines(devices))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"options": options, "results": results, "devices": devices},
                      f, indent=2)
    return 0


def options_for(defaults, quick=False, overrides=()):
    options = dict(defaults["quick"] if quick else defaults["full"])
    for item in overrides:
        name, _, value = item.partition("=")
        options[name] = json.loads(value)
    return options


# Timing.

def for_backend(value):
    """`value`, or its entry for the running Keras backend where `value` is
    a {backend: value} mapping.

    Step counts are set per backend so that one timed `fit` lasts about
    0.2-0.3 s everywhere: a JAX step of the optimizer-bound model takes a
    fifteenth of a torch one, and 40 steps of it (20 ms) left single timings
    noisier than the 2% the targets ask to resolve. Round counts too: a JAX
    round is short, and its timings in `fit` jump between two levels (the
    compiled step alone is steadier: `alternate` pairs each round's times).
    """
    if isinstance(value, dict):
        import keras

        return value[keras.backend.backend()]
    return value


def alternate(variants, rounds):
    """Times `variants` in alternation: after one unrecorded round, every
    round runs each variant once, in an order that rotates from round to
    round, so that load drifting over time hits all alike.

    A variant is a callable returning seconds per step, or a list of such
    callables, copies of one variant (`build_mirrored`), each run once per
    round: its time in that round is the geometric mean of the copies'.
    Returns {name: [ms per step, one per round]}.
    """
    copies = {name: run if isinstance(run, list) else [run]
              for name, run in variants.items()}
    order = [(name, k) for name, runs in copies.items() for k in range(len(runs))]
    for name, k in order:  # one unrecorded round: first runs are slow on some backends
        copies[name][k]()
    times = {name: [] for name in copies}
    for r in range(rounds):
        this_round = {name: [] for name in copies}
        for name, k in order[r % len(order):] + order[:r % len(order)]:
            this_round[name].append(copies[name][k]() * 1e3)
        for name, values in this_round.items():
            times[name].append(math.prod(values) ** (1 / len(values)))
    return times


def synchronize(model=None):
    """Waits until the device has run the work queued so far. On a CPU the
    work is done when a call returns; an accelerator runs it after, so a
    clock read without this counts the launches, not the work. On JAX it
    waits for `model`'s variables (nothing without a model, or inside a
    `fit`, which holds their values elsewhere)."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            tf.test.experimental.sync_devices()
    elif model is not None:
        import jax

        jax.block_until_ready([v.value for v in model.variables])


def repeat_timer(call, reps):
    """A callable timing `reps` calls of `call`, returning seconds per call
    (a variant for `alternate`)."""
    def run():
        synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            call()
        synchronize()
        return (time.perf_counter() - start) / reps
    return run


def build_mirrored(names, build):
    """{name: [built, built]}: `build(name)` twice for every name, in the
    order given and then in reverse (A B C, then C B A); then each built
    timer's `recompile()` (`fit_timer`), in the same order.

    Of identical models, the one whose `fit` compiled later runs slower on
    JAX: five plain copies here ran 0, +2, +4, +6 and +5% against the
    first, in a curve that mirroring alone does not cancel (it left "plain,
    again" 4-5% slower than "plain" on the 200-variable model). Compiled a
    second time, once all are built, the same copies were within 1.5% of
    one another, in no order. Mirrored, the two copies of every variant
    also sit at the same mean position, and `alternate` times them both.
    """
    built = {name: [] for name in names}
    order = list(names) + list(reversed(names))
    for name in order:
        built[name].append(build(name))
    copy = {name: 0 for name in names}
    for name in order:
        recompile = getattr(built[name][copy[name]], "recompile", None)
        copy[name] += 1
        if recompile is not None:
            recompile()
    return built


# A second plain variant, built like the others (`build_mirrored`): its ratio
# to the first shows how far two identical optimizers drift apart at the
# same number of rounds, the noise floor ("A/A"). The ratios of the other
# variants are taken against both plain variants together.
AGAIN = "plain, again"


def summarize(times, baseline="plain", again=None):
    """Median ms per step of each variant, and the median over rounds of its
    ratio to the baseline in the same round (paired, so slow spells of the
    machine cancel out).

    With a second baseline variant among `times` (`again`, by default
    `AGAIN` for the baseline "plain"), the baseline of a round is the
    geometric mean of both baseline variants' times, and `again`'s own ratio
    is to the first: the A/A ratio, which measures no change.
    """
    if again is None and baseline == "plain":
        again = AGAIN
    base = times[baseline]
    if again in times:
        base = [math.sqrt(a * b) for a, b in zip(base, times[again])]
    out = {}
    for name, values in times.items():
        reference = times[baseline] if name == again else base
        pairs = [v / b for v, b in zip(values, reference)]
        out[name] = {"ms": statistics.median(values), "ratio": statistics.median(pairs),
                     "rounds": values}
    return out


def fit_timer(model, x, y, batch, skip=2):
    """A callable timing one epoch of `model.fit`, returning seconds/step.

    The clock runs inside `fit`'s loop, from the start of batch `skip` to
    the end of training (which waits for the last step): what `fit` costs
    once per call (the dataset and its iterator, the first batches) is the
    same for every variant and would dilute their ratios toward 1 (on
    TensorFlow it is about a third of a 40-step epoch here).
    """
    import keras

    steps = len(x) // batch
    skip = min(skip, steps - 1)  # (quick runs have a few steps only)
    marks = {}

    class Clock(keras.callbacks.Callback):
        # Only these hooks: a batch-end hook would end Keras's asynchronous
        # dispatch of the steps.
        def on_train_batch_begin(self, index, logs=None):
            if index == skip:
                synchronize()  # (once: the earlier batches' work is not timed)
                marks["start"] = time.perf_counter()

        def on_train_end(self, logs=None):
            synchronize(self.model)
            marks["end"] = time.perf_counter()

    clock = Clock()

    def run():
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                  callbacks=[clock])
        return (marks["end"] - marks["start"]) / (steps - skip)

    def recompile():
        """A new compiled train step, in use (`build_mirrored`)."""
        model.make_train_function(force=True)
        model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)

    run.recompile = recompile
    return run


# Models.

def mlp(layers, width, seed=0):
    """An optimizer-bound model: many small Dense layers."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,))
    x = inputs
    for i in range(layers):
        x = keras.layers.Dense(width, activation="tanh", name=f"l{i}")(x)
    return keras.Model(inputs, x, name="mlp")


def cnn(seed=0, size=32, classes=10):
    """A compute-bound model: a small CNN on 32x32 images."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = inputs
    for i, filters in enumerate((16, 32, 32, 64, 64)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"l{i}")(x)
        if i in (0, 2):
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, name=f"l{5}")(x)
    return keras.Model(inputs, outputs, name="cnn")


def mlp_data(n, width, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, width)).astype("float32"),
            rng.normal(size=(n, width)).astype("float32"))


def cnn_data(n, size=32, classes=10, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, size, size, 3)).astype("float32"),
            rng.integers(0, classes, size=(n,)).astype("int32"))


# The optimizers under comparison, all doing the same job.

def distinct_multipliers(count):
    """`count` distinct learning-rate multipliers in (0, 1]."""
    return [0.5 ** (k / 4) for k in range(count)]


def base_optimizer(name, lr=1e-3):
    import keras

    if name == "AdamW":
        return keras.optimizers.AdamW(lr, weight_decay=0.01)
    if name == "SGD":
        return keras.optimizers.SGD(lr, momentum=0.9)
    return getattr(keras.optimizers, name)(lr)


def assignment(model, count):
    """Variable -> multiplier: the model's trainable variables dealt out over
    `count` distinct multipliers (variable i gets value i mod count)."""
    values = distinct_multipliers(count)
    return [(v, values[i % count]) for i, v in enumerate(model.trainable_variables)]


def difflr_optimizer(name, model, count):
    import difflr

    return difflr.LRMultiplier(base_optimizer(name), assignment(model, count))


def multi_optimizer(name, model, count, lr=1e-3):
    """Keras's MultiOptimizer doing the same job: one optimizer per distinct
    multiplier, each mapped to its variables by exact path."""
    import re

    import keras

    groups = {}
    for v, m in assignment(model, count):
        groups.setdefault(m, []).append(re.escape(v.path))
    mapping = keras.optimizers.OptimizerMap(default_optimizer=base_optimizer(name, lr))
    for m, paths in groups.items():
        mapping["|".join(paths)] = base_optimizer(name, lr * m)
    return keras.optimizers.MultiOptimizer(mapping)


def has_multi_optimizer():
    import keras

    return hasattr(keras.optimizers, "MultiOptimizer")


def optimizer_for(variant, name, model, count):
    if variant in ("plain", AGAIN):
        return base_optimizer(name)
    if variant == "difflr":
        return difflr_optimizer(name, model, count)
    if variant == "MultiOptimizer":
        return multi_optimizer(name, model, count)
    raise ValueError(variant)


def variants_available():
    """The variants to compare, in the order to build them."""
    return (["plain", "difflr"] + (["MultiOptimizer"] if has_multi_optimizer() else [])
            + [AGAIN])


# Reporting.

def machine():
    """What the numbers were measured on."""
    from difflr._machine import cpu_model, package_version

    versions = {name: package_version(name)
                for name in ("keras", "jax", "jaxlib", "tensorflow", "torch", "numpy")}
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "XLA_FLAGS",
                                            "OMP_NUM_THREADS") if k in os.environ},
    }


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def fmt_count(value, unit):
    """A count, or one per backend (`for_backend`), in words: "7 rounds",
    "400 (jax) / 40 (torch) steps"."""
    if isinstance(value, dict):
        return " / ".join(f"{n} ({b})" for b, n in value.items()) + f" {unit}"
    return f"{value} {unit}"


def fmt_ms(value):
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_ratio(value):
    return f"{value:.3f}"


def fmt_overhead(ratio):
    return f"{(ratio - 1) * 100:+.1f}%"
