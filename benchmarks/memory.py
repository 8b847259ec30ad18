"""Optimizer memory with a frozen backbone: the numbers held in optimizer
variables, against the plain optimizer.

A backbone of Dense layers and a Dense head, Adam. A frozen backbone must
cost no optimizer memory under difflr (multiplier 0 at build: no slots), as
little as `trainable=False` with a plain optimizer. MultiOptimizer has to
give the frozen group an optimizer of its own. The counts are exact, not
timed; one step of `fit` also checks that the frozen backbone does not move.

    python benchmarks/memory.py
"""

import sys

import _common as c

DEFAULTS = {
    "full": {"backbone_layers": 20, "width": 64, "classes": 10},
    "quick": {"backbone_layers": 2, "width": 8, "classes": 3},
}

VARIANTS = (
    ("plain Adam, all trainable", "plain"),
    ("plain Adam, backbone.trainable = False", "untrainable"),
    ("difflr, {backbone: 0}", "difflr"),
    ("difflr, {backbone: 0}, keep_frozen_state=True", "difflr_keep"),
    ("MultiOptimizer, backbone on Adam(0)", "multi_adam"),
    ("MultiOptimizer, backbone on SGD(0)", "multi_sgd"),
)


def _model(options):
    import keras

    keras.utils.set_random_seed(0)
    width = options["width"]
    inputs = keras.Input((width,))
    x = inputs
    for i in range(options["backbone_layers"]):
        x = keras.layers.Dense(width, activation="relu", name=f"b{i}")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    outer = keras.Input((width,))
    outputs = keras.layers.Dense(options["classes"], name="head")(backbone(outer))
    return keras.Model(outer, outputs), backbone


def _optimizer(kind, backbone):
    import keras

    import difflr

    if kind in ("plain", "untrainable"):
        return keras.optimizers.Adam(1e-3)
    if kind in ("difflr", "difflr_keep"):
        return difflr.LRMultiplier(keras.optimizers.Adam(1e-3), {backbone: 0.0},
                                   keep_frozen_state=kind == "difflr_keep")
    frozen = keras.optimizers.Adam(0.0) if kind == "multi_adam" else keras.optimizers.SGD(0.0)
    mapping = keras.optimizers.OptimizerMap(default_optimizer=keras.optimizers.Adam(1e-3))
    # A nested functional backbone keeps its own paths: b0/kernel, ...
    mapping["|".join(f"b{i}/.*" for i in range(len(backbone.layers) - 1))] = frozen
    return keras.optimizers.MultiOptimizer(mapping)


def _numbers(variables):
    import numpy as np

    return int(sum(np.prod(v.shape) for v in variables))


def measure(options):
    import numpy as np
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, options["width"])).astype("float32")
    y = rng.integers(0, options["classes"], size=(16,)).astype("int32")
    results = {}
    for label, kind in VARIANTS:
        if kind.startswith("multi") and not c.has_multi_optimizer():
            continue
        model, backbone = _model(options)
        if kind == "untrainable":
            backbone.trainable = False
        optimizer = _optimizer(kind, backbone)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        before = [keras.ops.convert_to_numpy(v) for v in backbone.weights]
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        after = [keras.ops.convert_to_numpy(v) for v in backbone.weights]
        opt_vars = model.optimizer.variables
        results[label] = {
            "model_numbers": _numbers(model.weights),
            "backbone_numbers": _numbers(backbone.weights),
            "optimizer_numbers": _numbers(opt_vars),
            "optimizer_variables": len(opt_vars),
            "backbone_moved": any(not np.array_equal(a, b) for a, b in zip(before, after)),
        }
    return results


def report(results, options):
    some = next(iter(results.values()))
    first = next(iter(some.values()))
    lines = [f"A backbone of {options['backbone_layers']} Dense({options['width']}) layers "
             f"({first['backbone_numbers']:,} numbers) and a Dense({options['classes']}) head "
             f"({first['model_numbers'] - first['backbone_numbers']:,} numbers); Adam. Numbers "
             "held in optimizer variables after one step of `fit` (identical on every backend "
             "unless a column says otherwise).\n"]
    backends = list(results)
    same = all(results[b] == results[backends[0]] for b in backends)
    shown = backends[:1] if same else backends
    lines.append("| optimizer | " + " | ".join(
        f"optimizer numbers ({b})" for b in shown) + " | x backbone size | backbone moved |")
    lines.append("|---|" + "---:|" * len(shown) + "---:|---|")
    for label, _ in VARIANTS:
        if label not in results[backends[0]]:
            continue
        row = results[backends[0]][label]
        numbers = " | ".join(f"{results[b][label]['optimizer_numbers']:,}" for b in shown)
        ratio = row["optimizer_numbers"] / row["backbone_numbers"]
        moved = "yes" if any(results[b][label]["backbone_moved"] for b in backends) else "no"
        lines.append(f"| {label} | {numbers} | {ratio:.2f} | {moved} |")
    if same:
        lines.append(f"\n(The same on {', '.join(backends)}.)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0]))
