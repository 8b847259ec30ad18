"""The optimizer step on the torch backend: Keras's AdamW, plain and under
`difflr.LRMultiplier`, against native `torch.optim.AdamW` (foreach) with
param groups, on the same parameter shapes.

Only the optimizer step is timed (`optimizer.apply(grads, variables)` in
Keras; `optimizer.step()` in PyTorch, gradients already in `.grad`), for 100
tensors of a 50-layer Dense(16) model and of a 50-layer Dense(256) model,
with 1 and with 25 distinct learning rates. The variants alternate round by
round; medians of per-round times.

    python benchmarks/torch_native.py
"""

import sys

import _common as c

BACKENDS = ("torch",)  # the only backend this benchmark means anything on

DEFAULTS = {
    "full": {"rounds": 7, "reps": 20, "groups": 25, "lr": 1e-3, "weight_decay": 0.01,
             "shapes": {"small": [50, 16], "wide": [50, 256]}},
    "quick": {"rounds": 2, "reps": 3, "groups": 5, "lr": 1e-3, "weight_decay": 0.01,
              "shapes": {"small": [5, 8]}},
}

VARIANTS = ("keras AdamW", "keras AdamW + difflr, 1 multiplier",
            "keras AdamW + difflr", "torch AdamW, 1 group", "torch AdamW, param groups")


def _shapes(layers, width):
    return [s for _ in range(layers) for s in ((width, width), (width,))]


def measure(options):
    import keras

    if keras.backend.backend() != "torch":
        return {"skipped": "torch backend only"}
    import numpy as np
    import torch

    import difflr

    lr, wd, count = options["lr"], options["weight_decay"], options["groups"]
    multipliers = c.distinct_multipliers(count)
    results = {}
    for label, (layers, width) in options["shapes"].items():
        shapes = _shapes(layers, width)
        rng = np.random.default_rng(0)
        values = [rng.normal(size=s).astype("float32") for s in shapes]
        # On Keras's device (a GPU's, where there is one), for both.
        device = keras.ops.zeros(()).device
        grads = [torch.tensor(rng.normal(size=s).astype("float32"), device=device)
                 for s in shapes]
        group_of = [i % count for i in range(len(shapes))]

        def keras_step(kind):
            variables = [keras.Variable(v, name=f"v{i}") for i, v in enumerate(values)]
            base = keras.optimizers.AdamW(lr, weight_decay=wd)
            if kind == "plain":
                opt = base
            else:
                m = (lambda i: multipliers[group_of[i]]) if kind == "groups" else (lambda i: 0.5)
                opt = difflr.LRMultiplier(base, [(v, m(i)) for i, v in enumerate(variables)])
            opt.build(variables)
            return lambda: opt.apply(grads, variables)

        def torch_step(grouped):
            params = [torch.nn.Parameter(torch.tensor(v, device=device)) for v in values]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            if grouped:
                groups = [{"params": [p for p, k in zip(params, group_of) if k == g],
                           "lr": lr * multipliers[g]} for g in range(count)]
            else:
                groups = [{"params": params}]
            opt = torch.optim.AdamW(groups, lr=lr, weight_decay=wd, foreach=True)
            return opt.step

        steps = {
            VARIANTS[0]: keras_step("plain"),
            VARIANTS[1]: keras_step("single"),
            VARIANTS[2]: keras_step("groups"),
            VARIANTS[3]: torch_step(False),
            VARIANTS[4]: torch_step(True),
        }

        for step in steps.values():
            step()  # build lazily created state
        timers = {k: c.repeat_timer(s, options["reps"]) for k, s in steps.items()}
        times = c.alternate(timers, options["rounds"])
        results[label] = {"tensors": len(shapes), "numbers": int(sum(v.size for v in values)),
                          "width": width, "groups": count,
                          "variants": c.summarize(times, baseline=VARIANTS[0])}
    return results


def report(results, options):
    torch_results = results.get("torch")
    if not torch_results or "skipped" in torch_results:
        return "(torch backend not measured)\n"
    labels = list(torch_results)
    lines = [f"Optimizer step only, {options['groups']} distinct learning rates where the "
             "variant says so; median of "
             f"{options['rounds']} alternating rounds of {options['reps']} steps.\n"]
    lines.append("| variant | " + " | ".join(
        f"{torch_results[k]['tensors']} tensors, {torch_results[k]['numbers']:,} numbers "
        "(ms/step)" for k in labels) + " |")
    lines.append("|---|" + "---:|" * len(labels))
    for name in VARIANTS:
        cells = [c.fmt_ms(torch_results[k]["variants"][name]["ms"]) for k in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0],
                    BACKENDS))
