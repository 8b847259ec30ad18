"""Step time of `model.fit` with multipliers that follow a schedule: 0, 4 and
25 of 25 groups on a schedule of their own, against the same groups at
constant multipliers.

The optimizer-bound model of `step_time.py` (many small Dense layers, a small
batch), its variables dealt out over 25 groups (`_common.assignment`). The
baseline is difflr with 25 constant multipliers ("constant"); "4 scheduled"
gives 4 of the groups a schedule each (4 distinct schedules, so 4
evaluations per step), "25 scheduled" all of them. A schedule is a
`difflr.schedules.Ramp` (or a Keras `CosineDecay`, `--set
schedule='"CosineDecay"'`) whose value stays near the group's constant over
the run, so the variants do the same job. The plain Keras optimizer runs
beside them for scale. Every variant is built twice, in mirrored order
(`_common.build_mirrored`), and they alternate round by round in one process
per backend; the table reports the median time per step and the median of
the per-round ratios to "constant", which runs as two variants: "constant
A/A" is the second against the first, the noise floor.

    python benchmarks/scheduled.py                    # all three backends
    python benchmarks/scheduled.py --backends jax --set rounds=3
    python benchmarks/scheduled.py --quick            # check that it runs
"""

import sys

import _common as c

DEFAULTS = {
    "full": {"rounds": {"jax": 21, "tensorflow": 21, "torch": 7},
             "optimizers": ["Adam", "AdamW", "SGD"], "groups": 25,
             "scheduled": [4, 25], "schedule": "Ramp",
             "layers": 50, "width": 16, "batch": 8,
             "steps": {"jax": 400, "tensorflow": 200, "torch": 40}},
    "quick": {"rounds": 2, "optimizers": ["Adam"], "groups": 25,
              "scheduled": [4, 25], "schedule": "Ramp",
              "layers": 13, "width": 8, "batch": 8, "steps": 5},
}

BASELINE = "constant"
AGAIN = "constant, again"
PLAIN = "plain"


def scheduled_name(count):
    return f"{count} scheduled"


def schedule_for(kind, group, value):
    """A schedule of its own for `group` (a distinct config each), staying
    within 1% of `value` over any run this benchmark makes."""
    import keras

    import difflr

    span = 10 ** 7 + group  # (distinct per group)
    if kind == "Ramp":
        return difflr.schedules.Ramp(start=0, steps=span, value=0.99 * value,
                                     initial=value)
    if kind == "CosineDecay":
        return keras.optimizers.schedules.CosineDecay(value, span)
    raise ValueError(f"schedule must be 'Ramp' or 'CosineDecay'; received {kind!r}")


def rules(model, options, scheduled):
    """The rules of the 25 groups, the first `scheduled` on a schedule."""
    count = options["groups"]
    values = c.distinct_multipliers(count)
    by_group = [schedule_for(options["schedule"], g, values[g]) if g < scheduled
                else values[g] for g in range(count)]
    return [(v, by_group[i % count]) for i, v in enumerate(model.trainable_variables)]


def optimizer_for(variant, name, model, options):
    import difflr

    if variant == PLAIN:
        return c.base_optimizer(name)
    scheduled = 0 if variant in (BASELINE, AGAIN) else int(variant.split()[0])
    return difflr.LRMultiplier(c.base_optimizer(name), rules(model, options, scheduled))


def variants(options):
    return ([BASELINE] + [scheduled_name(n) for n in options["scheduled"]]
            + [PLAIN, AGAIN])


def measure(options):
    batch, steps = options["batch"], c.for_backend(options["steps"])
    x, y = c.mlp_data(batch * steps, options["width"])
    results = {}
    for name in options["optimizers"]:
        models = []

        def timer(variant):
            model = c.mlp(options["layers"], options["width"])
            model.compile(optimizer=optimizer_for(variant, name, model, options),
                          loss="mse")
            model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, epochs=2,
                      verbose=0)  # build and compile
            models.append((variant, model))
            return c.fit_timer(model, x, y, batch)

        timers = c.build_mirrored(variants(options), timer)
        for variant, model in models:
            _check_schedules(variant, model)
        times = c.alternate(timers, c.for_backend(options["rounds"]))
        results[name] = {
            "variants": c.summarize(times, baseline=BASELINE, again=AGAIN),
            "variables": len(models[0][1].trainable_variables),
        }
    return results


def _check_schedules(variant, model):
    """Each variant runs the number of distinct schedules its name says."""
    opt = model.optimizer
    found = set()
    if variant != PLAIN:
        found = {id(opt.schedule_for(v)) for v in model.trainable_variables
                 if opt.schedule_for(v) is not None}
    expected = int(variant.split()[0]) if variant.endswith("scheduled") else 0
    if len(found) != expected:
        raise RuntimeError(f"{variant!r} runs {len(found)} schedules, not {expected}")


def report(results, options):
    some = next(iter(results.values()))[options["optimizers"][0]]
    scheduled = [scheduled_name(n) for n in options["scheduled"]]
    lines = [f"{options['layers']} Dense({options['width']}) layers, batch "
             f"{options['batch']}; {some['variables']} variables dealt out over "
             f"{options['groups']} groups, each with a `{options['schedule']}` of its own "
             f"where scheduled; median of "
             f"{c.fmt_count(options['rounds'], 'alternating rounds')} of "
             f"{c.fmt_count(options['steps'], 'steps')}.\n"]
    lines.append("| optimizer | backend | constant ms/step | "
                 + " | ".join(f"{s} ms/step | {s} / constant" for s in scheduled)
                 + " | constant / plain | constant A/A |")
    lines.append("|---|---|---:|" + "---:|---:|" * len(scheduled) + "---:|---:|")
    for name in options["optimizers"]:
        for backend, per_backend in results.items():
            v = per_backend[name]["variants"]
            cells = [c.fmt_ms(v[BASELINE]["ms"])]
            for s in scheduled:
                cells += [c.fmt_ms(v[s]["ms"]), c.fmt_ratio(v[s]["ratio"])]
            # (The plain optimizer's ratio is to "constant": its inverse is
            # difflr's overhead over plain.)
            cells += [c.fmt_ratio(1 / v[PLAIN]["ratio"]), c.fmt_ratio(v[AGAIN]["ratio"])]
            lines.append(f"| {name} | {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0]))
