"""Inspecting the learning rate every variable trains at: `summary`, `plot`.

Both read one table (`difflr/_table.py`), a row per trainable variable in
group order (bottom to head), with

    effective learning rate = base rate now * multiplier now

where the base rate is `optimizer.learning_rate` (a schedule evaluated at the
current `iterations`), and so is a multiplier that follows a schedule. An
optimizer that is not built yet is previewed: its
rules are resolved against the model's trainable variables exactly as
`fit` will resolve them, and nothing is built or changed.
"""

import numbers

import numpy as np

from difflr import _checks
from difflr import _scheduled
from difflr import _table


def summary(model, optimizer=None, expand=False, print_fn=None, groups=None):
    """Prints the learning rate each layer (or variable) of `model` trains at.

    Like `model.summary()`, one row per layer, grouped bottom to head as
    `difflr.groups(model)` groups them, with its learning-rate multiplier
    `m`, its decay multiplier `d` and its effective learning rate

        effective_lr = learning_rate(step) * m

    at the optimizer's current step. A multiplier that follows a schedule
    (`keras.optimizers.schedules.LearningRateSchedule`) shows its value at
    that step and the schedule's class (`"0.25 (CosineDecay)"`);
    `difflr.plot(model, steps=n)` draws it over the steps. A layer whose
    variables have different values lists them in variable order (`"1 / 2"`:
    kernel at 1, bias at 2).
    With `expand=True` there is a row per variable instead, with the rule
    that decided each value (`"layer 'body' (Sequential)"`, `"rule
    'head/.*'"`, `"default"`, ...), which is what to read when a rule map
    does not do what you meant. Each group ends with its totals (variables,
    parameters, and how many are frozen, i.e. at a constant multiplier of 0:
    a schedule at 0 at this step is not counted, since it moves at others).

    If the optimizer is not built yet (before `fit`), its rules are resolved
    for the model's trainable variables exactly as `fit` will resolve them,
    without building anything: a preview, which also raises now any error
    that `fit` would raise for a rule (a rule matching nothing, two rules
    disagreeing, ...).

    Nothing is returned, as with `model.summary()`; `optimizer.multiplier_for`
    gives single values programmatically.

    Args:
        model (keras.Model | keras.layers.Layer): A built Keras model (or
            layer).
        optimizer (difflr.LRMultiplier | None): The `difflr.LRMultiplier` to
            inspect, possibly wrapped in a `LossScaleOptimizer`. Defaults to
            `model.optimizer`.
        expand (bool): Whether to show one row per variable, with the deciding
            rules, instead of one per layer.
        print_fn (Callable[[str], Any] | None): Function called with each line
            of the table. Defaults to `print`.
        groups (list | None): The groups, bottom to head: a list whose items
            are lists of layers (or single layers). Must cover every trainable
            variable of the model exactly once. Defaults to
            `difflr.groups(model)`.

    Raises:
        TypeError: if the optimizer is not a `difflr.LRMultiplier`.
        ValueError: if the model has no optimizer and none is given, if the
            groups do not partition the model's trainable variables, or if a
            rule of an optimizer that is not built yet is invalid.

    Example:

    >>> import keras, difflr
    >>> inputs = keras.Input((3,))
    >>> body = keras.layers.Dense(4, name="body")
    >>> head = keras.layers.Dense(1, name="head")
    >>> model = keras.Model(inputs, head(body(inputs)), name="toy")
    >>> opt = difflr.LRMultiplier(keras.optimizers.SGD(0.01),
    ...                           {body: 0.1, "head/bias": 2.0})
    >>> difflr.summary(model, opt)  # before fit: a preview
    Model 'toy': LRMultiplier over SGD at step 0, base learning rate 0.01
    Preview: the optimizer is not built yet; rules resolved as `fit` will.
    =====================================================================
    Group  Layer         Params  LR mult  Decay mult  Effective LR
    =====================================================================
    0      body (Dense)  16      0.1      1           0.001
           group 0: 2 variables, 16 params; frozen: 0 variables, 0 params
    ---------------------------------------------------------------------
    1      head (Dense)  5       1 / 2    1           0.01 / 0.02
           group 1: 2 variables, 5 params; frozen: 0 variables, 0 params
    =====================================================================
    Total: 2 groups, 4 variables, 21 params; frozen: 0 variables, 0 params
    Several values: in variable order; expand=True shows each variable and its rule.
    """
    who = "difflr.summary"
    print_fn = print if print_fn is None else print_fn
    if not callable(print_fn):
        raise TypeError(
            f"{who}: `print_fn` must be a callable taking one line of text, "
            f"such as `print`; received {print_fn!r}."
        )
    table = _table.table(model, optimizer, groups, who, sources=bool(expand))
    for line in _format(table, bool(expand)):
        print_fn(line)


def plot(model, optimizer=None, ax=None, groups=None, steps=None):
    """Plots the effective learning rate by depth, or by step.

    By depth (the default): one point per trainable variable, in group
    order (bottom to head) and within a layer in variable order, at its
    effective learning rate at the optimizer's current step

        effective_lr = learning_rate(step) * m(step)

    on a log scale, with the base rate as a dashed line, every other group
    shaded and the groups numbered along the top, and variables at `m = 0`
    (which a log scale cannot show) marked with an `x` along the bottom:
    red where frozen, orange where a schedule is at 0 at this step. A
    multiplier that follows a schedule is circled.

    By step (`steps=`): one line per group, the effective learning rate it
    trains at over the steps given (the base rate's schedule times each
    multiplier's): how a warm-up or a smooth unfreezing will run before
    `fit`. A group whose variables follow different curves gets a line for
    each, labelled with the first variable's path. A float base rate is
    held at its current value; so is a schedule of the base rate that
    cannot be rebuilt from its config (a custom one not registered as
    serializable). Steps where a rate is 0 are gaps on the log scale.

    An optimizer that is not built yet is previewed, as by `difflr.summary`.

    Needs matplotlib, an optional dependency: `pip install matplotlib`.

    Args:
        model (keras.Model | keras.layers.Layer): A built Keras model (or
            layer).
        optimizer (difflr.LRMultiplier | None): The `difflr.LRMultiplier` to
            inspect, possibly wrapped in a `LossScaleOptimizer`. Defaults to
            `model.optimizer`.
        ax (matplotlib.axes.Axes | None): Optional matplotlib `Axes` to draw
            into. Defaults to a new figure from `matplotlib.pyplot.subplots()`.
        groups (list | None): The groups, bottom to head, as for
            `difflr.summary`. Defaults to `difflr.groups(model)`.
        steps (int | Sequence[int] | None): Optional steps to plot the rates
            over instead of the depth: an integer `n` for the steps `0` to
            `n - 1` (the plan of a run of `n` steps), or increasing steps
            >= 0 such as `range(0, 5000, 10)`. Defaults to None (by depth,
            at the current step).

    Returns:
        matplotlib.figure.Figure: The `Figure` drawn into. By depth, the
        line labelled `"effective learning rate"` holds the data: x is the
        variable index, y the effective rate (NaN at 0). By step, each
        group's line is labelled `"group <g>"` (with `": <path>"` where the
        group has several curves, and the schedule's class in parentheses):
        x is the step, y the effective rate there.

    Raises:
        ImportError: if matplotlib is not installed.
        TypeError, ValueError: as `difflr.summary`, or if `steps` is not an
            integer >= 1 or a non-empty increasing sequence of integers
            >= 0.

    Example:

    >>> import keras, difflr
    >>> import matplotlib; matplotlib.use("Agg")
    >>> inputs = keras.Input((3,))
    >>> body = keras.layers.Dense(4, name="body")
    >>> head = keras.layers.Dense(1, name="head")
    >>> model = keras.Model(inputs, head(body(inputs)))
    >>> opt = difflr.LRMultiplier(keras.optimizers.SGD(0.01), {body: 0.1})
    >>> fig = difflr.plot(model, opt)
    >>> fig.savefig("learning_rates.png")
    >>> # The body warms up to 0.1 from step 100 to 150: the plan, by step.
    >>> opt = difflr.LRMultiplier(keras.optimizers.SGD(0.01), {
    ...     body: difflr.schedules.Ramp(start=100, steps=50, value=0.1)})
    >>> fig = difflr.plot(model, opt, steps=200)
    >>> fig.savefig("learning_rates_by_step.png")
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "difflr.plot needs matplotlib, an optional dependency of "
            "keras-difflr. Install it with `pip install matplotlib`."
        ) from e
    steps = None if steps is None else _checked_steps(steps)
    table = _table.table(model, optimizer, groups, "difflr.plot", sources=False)
    if ax is None:
        width = 4 + 0.08 * len(table["rows"]) if steps is None else 8
        _, ax = plt.subplots(figsize=(min(12.0, width), 4))
    if steps is None:
        _plot_by_depth(ax, table)
    else:
        _plot_by_step(ax, table, steps)
    ax.legend(loc="best", fontsize="small")
    return ax.figure


def _checked_steps(steps):
    """`steps` as a 1-d int64 array, or raises."""
    who = "difflr.plot"
    if isinstance(steps, (bool, str, bytes)) or not (
            isinstance(steps, numbers.Integral) or hasattr(steps, "__iter__")):
        raise TypeError(
            f"{who}: `steps` must be an integer (the steps 0 to n - 1) or a "
            f"sequence of steps; received {steps!r} of type "
            f"{type(steps).__name__}.")
    if isinstance(steps, numbers.Integral):
        return np.arange(_checks.integer(steps, "steps", who, minimum=1))
    values = [_checks.integer(t, "each entry of steps", who) for t in steps]
    if not values or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(
            f"{who}: `steps` must be a non-empty increasing sequence of "
            f"steps, such as `range(0, 5000, 10)`; received {values[:8]!r}"
            f"{' ...' if len(values) > 8 else ''}.")
    return np.array(values, "int64")


def _plot_by_depth(ax, table):
    from matplotlib import ticker
    from matplotlib import transforms

    rows = table["rows"]
    x = np.arange(len(rows))
    rates = np.array([r["effective_lr"] for r in rows], dtype="float64")
    scheduled = np.array([r["schedule"] is not None for r in rows], dtype=bool)
    zero = rates == 0
    below = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    _shade_groups(ax, rows, below)
    ax.plot(x, np.where(zero, np.nan, rates), "o-", color="tab:blue",
            markersize=3, drawstyle="steps-mid",
            label="effective learning rate")
    if (scheduled & ~zero).any():
        ax.plot(x[scheduled & ~zero], rates[scheduled & ~zero], "o",
                markerfacecolor="none", markeredgecolor="tab:orange",
                markersize=7, label=f"follows a schedule (value at step "
                f"{table['step']})")
    for where, color, label in ((zero & ~scheduled, "tab:red", "frozen (multiplier 0)"),
                                (zero & scheduled, "tab:orange",
                                 "schedule at 0 at this step")):
        if where.any():
            ax.plot(x[where], np.full(int(where.sum()), 0.03), "x", color=color,
                    transform=below, label=label)
    if table["base"] > 0:
        ax.axhline(table["base"], color="black", linestyle="--", linewidth=1,
                   label=f"base rate {table['base']:.4g}")
    if (rates > 0).any():
        ax.set_yscale("log")
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trainable variable, bottom to head (groups numbered on "
                  "top, every other one shaded)")
    ax.set_ylabel("effective learning rate")
    ax.set_title(f"{table['model']}: effective learning rate at step "
                 f"{table['step']}", pad=18)


def _shade_groups(ax, rows, below):
    """Every other group shaded, the groups numbered along the top."""
    by_group = _split_by_group(rows)
    label_every = -(-len(by_group) // 24)  # numbers on top stay legible
    start = 0
    for g, group_rows in enumerate(by_group):
        end = start + len(group_rows)
        if g % 2 == 0:
            ax.axvspan(start - 0.5, end - 0.5, color="tab:gray", alpha=0.12,
                       linewidth=0)
        if g % label_every == 0:
            ax.text((start + end - 1) / 2, 1.01, str(g), transform=below,
                    ha="center", va="bottom", fontsize="small")
        start = end


def _plot_by_step(ax, table, steps):
    schedule = _table.base_rate_schedule(table["optimizer"])
    base = _table.curve(table["base"] if schedule is None else schedule, steps)
    any_positive = False
    for g, rows in enumerate(_split_by_group(table["rows"])):
        curves = _table.distinct_curves(rows)
        for row in curves:
            rates = base * _table.curve(_table.in_force(row), steps)
            any_positive = any_positive or bool((rates > 0).any())
            label = f"group {g}"
            if len(curves) > 1:
                label += f": {row['variable'].path}"
            if row["schedule"] is not None:
                label += f" ({_scheduled.name(row['schedule'])})"
            ax.plot(steps, rates, "-", label=label)
    ax.plot(steps, base, "--", color="black", linewidth=1, label="base rate")
    if steps[0] <= table["step"] <= steps[-1]:
        ax.axvline(table["step"], color="tab:gray", linestyle=":", linewidth=1,
                   label=f"now (step {table['step']})")
    if any_positive:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step (iterations)")
    ax.set_ylabel("effective learning rate")
    ax.set_title(f"{table['model']}: effective learning rate by step")


# Text layout.


def _num(x):
    return f"{x:.4g}"


def _cell(value, schedule=None):
    """A value at the step, and the class of the schedule it follows:
    "0.25 (CosineDecay)"."""
    return _num(value) + ("" if schedule is None
                          else f" ({_scheduled.name(schedule)})")


def _values(values, schedules=None):
    """Distinct values in order of appearance: "0.1", "1 / 2", "0.1 .. 2 (4
    values)", each with the schedule it follows, if any."""
    schedules = schedules or [None] * len(values)
    cells = list(dict.fromkeys(_cell(v, s) for v, s in zip(values, schedules)))
    if len(cells) <= 3:
        return " / ".join(cells)
    some = ", some scheduled" if any(s is not None for s in schedules) else ""
    return f"{_num(min(values))} .. {_num(max(values))} ({len(cells)} values{some})"


def _split_by_group(rows):
    groups = []
    for row in rows:
        if not groups or groups[-1][0]["group"] != row["group"]:
            groups.append([])
        groups[-1].append(row)
    return groups


def _split_by_layer(rows):
    layers = []
    for row in rows:
        if not layers or layers[-1][0]["layer"] is not row["layer"]:
            layers.append([])
        layers[-1].append(row)
    return layers


def _totals(rows):
    # A schedule at 0 at this step is not frozen: it moves at others.
    frozen = [r for r in rows if r["multiplier"] == 0 and r["schedule"] is None]
    return (f"{len(rows)} variables, {sum(r['params'] for r in rows):,} "
            f"params; frozen: {len(frozen)} variables, "
            f"{sum(r['params'] for r in frozen):,} params")


def _format(table, expand):
    opt = table["optimizer"]
    lines = [
        f"Model '{table['model']}': LRMultiplier over "
        f"{type(opt.inner_optimizer).__name__} at step {table['step']}, "
        f"base learning rate {_num(table['base'])}"
    ]
    if not table["built"]:
        lines.append("Preview: the optimizer is not built yet; rules "
                     "resolved as `fit` will.")
    if expand:
        header = ["Group", "Variable", "Shape", "Params", "LR mult",
                  "Decay mult", "Effective LR", "LR rule", "Decay rule"]
    else:
        header = ["Group", "Layer", "Params", "LR mult", "Decay mult",
                  "Effective LR"]
    blocks = []  # (cells of each row, footer) per group
    mixed = False
    by_group = _split_by_group(table["rows"])
    for g, rows in enumerate(by_group):
        cells = []
        if expand:
            for r in rows:
                cells.append([
                    str(g), r["variable"].path, str(tuple(r["variable"].shape)),
                    f"{r['params']:,}", _cell(r["multiplier"], r["schedule"]),
                    _cell(r["decay_multiplier"], r["decay_schedule"]),
                    _num(r["effective_lr"]),
                    r["lr_rule"], r["decay_rule"],
                ])
        else:
            for layer_rows in _split_by_layer(rows):
                layer = layer_rows[0]["layer"]
                column = lambda key, by=None: _values(
                    [r[key] for r in layer_rows],
                    by and [r[by] for r in layer_rows])
                row = [
                    str(g), f"{layer.name} ({type(layer).__name__})",
                    f"{sum(r['params'] for r in layer_rows):,}",
                    column("multiplier", "schedule"),
                    column("decay_multiplier", "decay_schedule"),
                    column("effective_lr"),
                ]
                mixed = mixed or len({
                    (_cell(r["multiplier"], r["schedule"]),
                     _cell(r["decay_multiplier"], r["decay_schedule"]))
                    for r in layer_rows}) > 1
                cells.append(row)
        blocks.append((cells, f"group {g}: {_totals(rows)}"))

    widths = [max([len(h)] + [len(c[i]) for cells, _ in blocks for c in cells])
              for i, h in enumerate(header)]
    indent = " " * (widths[0] + 2)
    render = lambda cells: "  ".join(
        c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    rule_width = max([len(render(["x" * w for w in widths]))]
                     + [len(indent + footer) for _, footer in blocks])
    lines += ["=" * rule_width, render(header), "=" * rule_width]
    for k, (cells, footer) in enumerate(blocks):
        if k:
            lines.append("-" * rule_width)
        lines += [render(c) for c in cells]
        lines.append(indent + footer)
    lines.append("=" * rule_width)
    lines.append(f"Total: {len(blocks)} groups, {_totals(table['rows'])}")
    if mixed:
        lines.append("Several values: in variable order; expand=True "
                     "shows each variable and its rule.")
    if any(r["schedule"] is not None or r["decay_schedule"] is not None
           for r in table["rows"]):
        lines.append(f"Schedules (class in parentheses): values at step "
                     f"{table['step']}; `difflr.plot(model, steps=n)` draws "
                     "the rates over n steps.")
    return lines
