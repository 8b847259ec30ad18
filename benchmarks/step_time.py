"""Step time of `model.fit`: the plain optimizer, `difflr.LRMultiplier` and
`keras.optimizers.MultiOptimizer` doing the same job.

Two models: an optimizer-bound one (many small Dense layers, a small batch),
where the optimizer's per-variable work dominates the step, and a
compute-bound one (a small CNN). Adam, AdamW (weight decay 0.01) and SGD
(momentum 0.9); the model's variables are dealt out over 25 distinct
multipliers (the CNN has fewer variables: one multiplier each). Every
variant is built twice, in mirrored order (`_common.build_mirrored`), and
the variants alternate round by round in one process per backend; the table
reports the median time per step and the median of the per-round ratios to
the plain optimizer, measured as two variants (`_common.AGAIN`; the "plain
A/A" column is the second against the first: the noise floor).

    python benchmarks/step_time.py                    # all three backends
    python benchmarks/step_time.py --backends jax --set rounds=3
"""

import sys

import _common as c

DEFAULTS = {
    "full": {"rounds": {"jax": 21, "tensorflow": 21, "torch": 7},
             "optimizers": ["Adam", "AdamW", "SGD"], "multipliers": 25,
             "mlp_layers": 50, "mlp_width": 16, "mlp_batch": 8,
             "mlp_steps": {"jax": 400, "tensorflow": 200, "torch": 40},
             "cnn_batch": 16, "cnn_steps": {"jax": 24, "tensorflow": 48, "torch": 24}},
    "quick": {"rounds": 2, "optimizers": ["Adam"], "multipliers": 25,
              "mlp_layers": 10, "mlp_width": 16, "mlp_batch": 8, "mlp_steps": 5,
              "cnn_batch": 8, "cnn_steps": 2},
}

MODELS = ("optimizer-bound", "compute-bound")
STEPS_OPTION = {"optimizer-bound": "mlp_steps", "compute-bound": "cnn_steps"}


def describe(options):
    return {
        "optimizer-bound": (f"{options['mlp_layers']} Dense({options['mlp_width']}) "
                            f"layers, batch {options['mlp_batch']}"),
        "compute-bound": f"5 Conv2D + Dense on 32x32x3, batch {options['cnn_batch']}",
    }


def _setup(kind, options):
    if kind == "optimizer-bound":
        batch, steps = options["mlp_batch"], c.for_backend(options["mlp_steps"])
        x, y = c.mlp_data(batch * steps, options["mlp_width"])
        return (lambda: c.mlp(options["mlp_layers"], options["mlp_width"])), "mse", x, y, batch
    batch, steps = options["cnn_batch"], c.for_backend(options["cnn_steps"])
    x, y = c.cnn_data(batch * steps)
    return c.cnn, "sparse_categorical_crossentropy", x, y, batch


def measure(options):
    results = {}
    for kind in MODELS:
        build, loss, x, y, batch = _setup(kind, options)
        for name in options["optimizers"]:
            models = []

            def timer(variant):
                model = build()
                model.compile(optimizer=c.optimizer_for(variant, name, model,
                                                        options["multipliers"]),
                              loss=loss)
                model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, epochs=2,
                          verbose=0)  # build and compile
                models.append(model)
                return c.fit_timer(model, x, y, batch)

            timers = c.build_mirrored(c.variants_available(), timer)
            rounds = c.for_backend(options["rounds"])
            summary = c.summarize(c.alternate(timers, rounds))
            variables = len(models[0].trainable_variables)
            results[f"{kind}/{name}"] = {
                "variants": summary, "variables": variables,
                "multipliers": min(options["multipliers"], variables)}
    return results


def report(results, options):
    lines = []
    described = describe(options)
    for kind in MODELS:
        some = next(iter(results.values()))
        first = some[f"{kind}/{options['optimizers'][0]}"]
        lines.append(f"**{kind}** ({described[kind]}; {first['variables']} variables, "
                     f"{first['multipliers']} distinct multipliers; median of "
                     f"{c.fmt_count(options['rounds'], 'alternating rounds')} of "
                     f"{c.fmt_count(options[STEPS_OPTION[kind]], 'steps')})\n")
        lines.append("| optimizer | backend | plain ms/step | difflr ms/step | difflr / plain "
                     "| MultiOptimizer ms/step | MultiOptimizer / plain | plain A/A |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for name in options["optimizers"]:
            for backend, per_backend in results.items():
                v = per_backend[f"{kind}/{name}"]["variants"]
                multi = v.get("MultiOptimizer")
                multi_cells = ("n/a | n/a" if multi is None else
                               f"{c.fmt_ms(multi['ms'])} | {c.fmt_ratio(multi['ratio'])}")
                again = v.get(c.AGAIN)
                lines.append(f"| {name} | {backend} | {c.fmt_ms(v['plain']['ms'])} | "
                             f"{c.fmt_ms(v['difflr']['ms'])} | "
                             f"{c.fmt_ratio(v['difflr']['ratio'])} | {multi_cells} | "
                             f"{'n/a' if again is None else c.fmt_ratio(again['ratio'])} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0]))
