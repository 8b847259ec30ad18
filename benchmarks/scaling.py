"""How the overhead grows with the number of distinct multipliers and with
the number of variables.

On the optimizer-bound model (Dense(16) layers, batch 8, Adam): with 100
layers (200 variables), the variables dealt out over 1, 5, 25, 100 and 200
(one per variable) distinct multipliers; and at 25 multipliers, models of 10,
50 and 100 layers. Each model size has its own plain baseline (two plain
variants: `_common.AGAIN`); every variant is built twice, in mirrored order
(`_common.build_mirrored`), and alternated with the others round by round;
ratios are medians of per-round ratios.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --backends torch --set rounds=3
"""

import sys

import _common as c

DEFAULTS = {
    "full": {"rounds": {"jax": 11, "tensorflow": 7, "torch": 5},
             "optimizer": "Adam", "width": 16, "batch": 8,
             "steps": {"jax": 200, "tensorflow": 80, "torch": 25},
             "layers": 100, "counts": [1, 5, 25, 100, 200],
             "variable_layers": [10, 50], "variable_count": 25,
             "multi_counts": [1, 5, 25]},
    "quick": {"rounds": 2, "optimizer": "Adam", "width": 16, "batch": 8, "steps": 3,
              "layers": 6, "counts": [1, 3, 12], "variable_layers": [3],
              "variable_count": 3, "multi_counts": [3]},
}


def plan(options):
    """{layers: [counts]} to measure (a count of 0 is the plain optimizer)."""
    wanted = {options["layers"]: list(options["counts"])}
    for layers in options["variable_layers"]:
        wanted.setdefault(layers, [])
        if options["variable_count"] not in wanted[layers]:
            wanted[layers].append(options["variable_count"])
    if options["variable_count"] not in wanted[options["layers"]]:
        wanted[options["layers"]].append(options["variable_count"])
    return wanted


def measure(options):
    name, width, batch = options["optimizer"], options["width"], options["batch"]
    x, y = c.mlp_data(batch * c.for_backend(options["steps"]), width)
    results = {}
    for layers, counts in plan(options).items():
        variants = [("plain", 0)] + [("difflr", k) for k in counts]
        if c.has_multi_optimizer():
            variants += [("MultiOptimizer", k) for k in counts
                         if k in options["multi_counts"]]
        variants.append((c.AGAIN, 0))
        counts_of = {(v if v in ("plain", c.AGAIN) else f"{v}@{k}"): (v, k)
                     for v, k in variants}

        def timer(label):
            variant, count = counts_of[label]
            model = c.mlp(layers, width)
            model.compile(optimizer=c.optimizer_for(variant, name, model, count), loss="mse")
            model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, epochs=2, verbose=0)
            return c.fit_timer(model, x, y, batch)

        timers = c.build_mirrored(list(counts_of), timer)
        times = c.alternate(timers, c.for_backend(options["rounds"]))
        results[str(layers)] = {"variables": 2 * layers, "variants": c.summarize(times)}
    return results


def series(per_backend, options, variant):
    """[(count, ratio)] of `variant` on the model with `options['layers']`."""
    v = per_backend[str(options["layers"])]["variants"]
    return [(k, v[f"{variant}@{k}"]["ratio"]) for k in options["counts"]
            if f"{variant}@{k}" in v]


def report(results, options):
    layers = options["layers"]
    lines = [f"**Distinct multipliers** ({layers} Dense({options['width']}) layers = "
             f"{2 * layers} variables, batch {options['batch']}, {options['optimizer']}; "
             "step time relative to the plain optimizer, median of "
             f"{c.fmt_count(options['rounds'], 'alternating rounds')} of "
             f"{c.fmt_count(options['steps'], 'steps')})\n"]
    header = "| backend | plain ms/step | " + " | ".join(
        f"difflr @{k}" for k in options["counts"]) + " | " + " | ".join(
        f"MultiOptimizer @{k}" for k in options["counts"] if k in options["multi_counts"]
    ) + " | plain A/A |"
    lines.append(header)
    lines.append("|---|" + "---:|" * (header.count("|") - 2))
    for backend, per_backend in results.items():
        v = per_backend[str(layers)]["variants"]
        cells = [c.fmt_ms(v["plain"]["ms"])]
        cells += [c.fmt_ratio(r) for _, r in series(per_backend, options, "difflr")]
        cells += [c.fmt_ratio(r) for _, r in series(per_backend, options, "MultiOptimizer")]
        cells.append(_aa(v))
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    count = options["variable_count"]
    sizes = sorted(int(k) for k in next(iter(results.values())))
    lines.append(f"\n**Number of variables** ({count} distinct multipliers, or one per "
                 f"variable when there are fewer; difflr / plain)\n")
    lines.append("| backend | " + " | ".join(f"{2 * n} variables (A/A)" for n in sizes)
                 + " |")
    lines.append("|---|" + "---:|" * len(sizes))
    for backend, per_backend in results.items():
        cells = []
        for n in sizes:
            v = per_backend[str(n)]["variants"]
            cells.append(f"{c.fmt_ratio(v[f'difflr@{count}']['ratio'])} ({_aa(v)})")
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _aa(variants):
    again = variants.get(c.AGAIN)
    return "n/a" if again is None else c.fmt_ratio(again["ratio"])


def plot(results, options, path):
    """Overhead (%) against the number of distinct multipliers, per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"jax": "tab:blue", "tensorflow": "tab:orange", "torch": "tab:red"}
    for backend, per_backend in results.items():
        color = colors.get(backend)
        for variant, style in (("difflr", "-o"), ("MultiOptimizer", ":s")):
            points = series(per_backend, options, variant)
            if points:
                ax.plot([k for k, _ in points], [(r - 1) * 100 for _, r in points], style,
                        color=color, label=f"{variant} ({backend})")
    ax.axhline(0, color="gray", lw=0.8)
    ax.axhline(2, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xticks(options["counts"])
    ax.set_xticklabels([str(k) for k in options["counts"]])
    ax.set_xlabel(f"distinct learning-rate multipliers ({2 * options['layers']} variables)")
    ax.set_ylabel("step time vs plain optimizer (%)")
    ax.set_title(f"model.fit overhead, {options['layers']} Dense({options['width']}) layers, "
                 f"{options['optimizer']}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0]))
