"""Inspecting the learning rate every variable trains at: `summary`, `plot`.

Both read one table (`difflr/_table.py`), a row per trainable variable in
group order (bottom to head), with

    effective learning rate = base rate now * multiplier

where the base rate is `optimizer.learning_rate` (a schedule evaluated at the
current `iterations`). An optimizer that is not built yet is previewed: its
rules are resolved against the model's trainable variables exactly as
`fit` will resolve them, and nothing is built or changed.
"""

import numpy as np

from difflr import _table


def summary(model, optimizer=None, expand=False, print_fn=None, groups=None):
    """Prints the learning rate each layer (or variable) of `model` trains at.

    Like `model.summary()`, one row per layer, grouped bottom to head as
    `difflr.groups(model)` groups them, with its learning-rate multiplier
    `m`, its decay multiplier `d` and its effective learning rate

        effective_lr = learning_rate(step) * m

    at the optimizer's current step. A layer whose variables have different
    values lists them in variable order (`"1 / 2"`: kernel at 1, bias at 2).
    With `expand=True` there is a row per variable instead, with the rule
    that decided each value (`"layer 'body' (Sequential)"`, `"rule
    'head/.*'"`, `"default"`, ...), which is what to read when a rule map
    does not do what you meant. Each group ends with its totals (variables,
    parameters, and how many are frozen, i.e. at multiplier 0).

    If the optimizer is not built yet (before `fit`), its rules are resolved
    for the model's trainable variables exactly as `fit` will resolve them,
    without building anything: a preview, which also raises now any error
    that `fit` would raise for a rule (a rule matching nothing, two rules
    disagreeing, ...).

    Nothing is returned, as with `model.summary()`; `optimizer.multiplier_for`
    gives single values programmatically.

    Args:
        model: A built Keras model (or layer).
        optimizer: The `difflr.LRMultiplier` to inspect, possibly wrapped in
            a `LossScaleOptimizer`. Defaults to `model.optimizer`.
        expand: Whether to show one row per variable, with the deciding
            rules, instead of one per layer.
        print_fn: Function called with each line of the table. Defaults to
            `print`.
        groups: The groups, bottom to head: a list whose items are lists of
            layers (or single layers). Must cover every trainable variable
            of the model exactly once. Defaults to `difflr.groups(model)`.

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


def plot(model, optimizer=None, ax=None, groups=None):
    """Plots the effective learning rate by depth, bottom to head.

    One point per trainable variable, in group order (bottom to head) and
    within a layer in variable order, at its effective learning rate

        effective_lr = learning_rate(step) * m

    on a log scale, with the base rate as a dashed line, every other group
    shaded and the groups numbered along the top, and frozen variables (`m = 0`, which a log scale
    cannot show) marked with an `x` along the bottom. An optimizer that is
    not built yet is previewed, as by `difflr.summary`.

    Needs matplotlib, an optional dependency: `pip install keras-difflr[demo]`
    (or `pip install matplotlib`).

    Args:
        model: A built Keras model (or layer).
        optimizer: The `difflr.LRMultiplier` to inspect, possibly wrapped in
            a `LossScaleOptimizer`. Defaults to `model.optimizer`.
        ax: Optional matplotlib `Axes` to draw into. Defaults to a new figure
            from `matplotlib.pyplot.subplots()`.
        groups: The groups, bottom to head, as for `difflr.summary`.
            Defaults to `difflr.groups(model)`.

    Returns:
        The matplotlib `Figure` drawn into. The line labelled `"effective
        learning rate"` holds the data: x is the variable index, y the
        effective rate (NaN where frozen).

    Raises:
        ImportError: if matplotlib is not installed.
        TypeError, ValueError: as `difflr.summary`.

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
    """
    try:
        import matplotlib.pyplot as plt
        from matplotlib import ticker
        from matplotlib import transforms
    except ImportError as e:
        raise ImportError(
            "difflr.plot needs matplotlib, an optional dependency of "
            "keras-difflr. Install it with `pip install keras-difflr[demo]` "
            "(or `pip install matplotlib`)."
        ) from e
    table = _table.table(model, optimizer, groups, "difflr.plot", sources=False)
    rows = table["rows"]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12.0, 4 + 0.08 * len(rows)), 4))
    x = np.arange(len(rows))
    rates = np.array([r["effective_lr"] for r in rows], dtype="float64")
    frozen = rates == 0
    below = transforms.blended_transform_factory(ax.transData, ax.transAxes)

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
    ax.plot(x, np.where(frozen, np.nan, rates), "o-", color="tab:blue",
            markersize=3, drawstyle="steps-mid",
            label="effective learning rate")
    if frozen.any():
        ax.plot(x[frozen], np.full(int(frozen.sum()), 0.03), "x",
                color="tab:red", transform=below, label="frozen (multiplier 0)")
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
    ax.legend(loc="best", fontsize="small")
    return ax.figure


# Text layout.


def _num(x):
    return f"{x:.4g}"


def _values(values):
    """Distinct values in order of appearance: "0.1", "1 / 2", "0.1 .. 2 (4)"."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) <= 3:
        return " / ".join(_num(x) for x in distinct)
    return f"{_num(min(distinct))} .. {_num(max(distinct))} ({len(distinct)} values)"


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
    frozen = [r for r in rows if r["multiplier"] == 0]
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
                    f"{r['params']:,}", _num(r["multiplier"]),
                    _num(r["decay_multiplier"]), _num(r["effective_lr"]),
                    r["lr_rule"], r["decay_rule"],
                ])
        else:
            for layer_rows in _split_by_layer(rows):
                layer = layer_rows[0]["layer"]
                column = lambda key: _values([r[key] for r in layer_rows])
                row = [
                    str(g), f"{layer.name} ({type(layer).__name__})",
                    f"{sum(r['params'] for r in layer_rows):,}",
                    column("multiplier"), column("decay_multiplier"),
                    column("effective_lr"),
                ]
                mixed = mixed or len({(r["multiplier"], r["decay_multiplier"])
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
    return lines
