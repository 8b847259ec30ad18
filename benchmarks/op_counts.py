"""What a training step executes, counted rather than timed (so it does not
depend on the machine's load): XLA kernels in JAX's compiled train step,
operations in TensorFlow's traced train step, and on the torch backend the
`torch._foreach_*` calls and ATen operations of one optimizer step.

The optimizer-bound model (50 Dense(16) layers, 100 variables), for the
plain optimizer, difflr with 1, 25 and 100 (one per variable) distinct
multipliers, and MultiOptimizer with 25 groups.

    python benchmarks/op_counts.py
"""

import sys

import _common as c
from difflr import _executed

DEFAULTS = {
    "full": {"layers": 50, "width": 16, "batch": 8, "optimizers": ["Adam", "AdamW", "SGD"],
             "counts": [1, 25, 100], "multi_count": 25},
    "quick": {"layers": 3, "width": 8, "batch": 8, "optimizers": ["Adam"],
              "counts": [1, 6], "multi_count": 3},
}

def _native_torch(options, groups):
    import torch
    from torch.profiler import profile

    shapes = [s for _ in range(options["layers"])
              for s in ((options["width"], options["width"]), (options["width"],))]
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p in params:
        p.grad = torch.ones_like(p)
    param_groups = [{"params": params[g::groups], "lr": 1e-3 * 0.9 ** g}
                    for g in range(groups)]
    opt = torch.optim.AdamW(param_groups, lr=1e-3, foreach=True)
    opt.step()
    with profile() as prof:
        opt.step()
    return _executed.count_events(prof.events())


def measure(options):
    import keras

    backend = keras.backend.backend()
    layers, width, batch = options["layers"], options["width"], options["batch"]
    x, y = c.mlp_data(batch, width)
    variants = [("plain", 0)] + [("difflr", k) for k in options["counts"]]
    if c.has_multi_optimizer():
        variants.append(("MultiOptimizer", options["multi_count"]))
    results = {}
    for name in options["optimizers"]:
        row = {}
        for variant, count in variants:
            model = c.mlp(layers, width)
            model.compile(optimizer=c.optimizer_for(variant, name, model, count), loss="mse")
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            label = variant if variant == "plain" else f"{variant}@{count}"
            row[label] = _executed.count(model, x, y)
        results[name] = row
    if backend == "torch":
        results["native torch AdamW"] = {
            "1 group": _native_torch(options, 1),
            f"{options['multi_count']} groups": _native_torch(options, options["multi_count"]),
        }
    return results


def report(results, options):
    lines = []
    units = {"jax": "XLA kernels in the compiled train step",
             "tensorflow": "operations in the traced train step (constants excluded)",
             "torch": "`torch._foreach_*` calls / ATen operations in one optimizer step"}
    for backend, per_backend in results.items():
        lines.append(f"**{backend}**: {units[backend]} ({options['layers']} Dense("
                     f"{options['width']}) layers, {2 * options['layers']} variables)\n")
        columns = list(per_backend[options["optimizers"][0]])
        lines.append("| optimizer | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for name in options["optimizers"]:
            row = per_backend[name]
            cells = []
            for col in columns:
                value = row[col]
                cells.append(f"{value['foreach']} / {value['aten']}" if isinstance(value, dict)
                             else str(value))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        native = per_backend.get("native torch AdamW")
        if native:
            lines.append("| native torch.optim.AdamW (foreach) | " + " | ".join(
                f"{k}: {v['foreach']} / {v['aten']}" for k, v in native.items()) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0]))
