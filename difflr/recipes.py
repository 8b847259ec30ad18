"""Rule maps for the classic fine-tuning recipes.

Each function returns a rule map for `difflr.LRMultiplier`: a dict from layers
to multipliers, one entry per layer of each group (see `difflr.groups`), so it
can be merged with rules of your own.

- `discriminative`: fastai / ULMFiT discriminative learning rates.
"""

import math
import numbers

from difflr import grouping


def discriminative(groups, lr=None, factor=None):
    """Discriminative learning-rate multipliers (fastai, ULMFiT).

    Lower groups train slower than the head. With `n` groups, group `i`
    (0 = bottom, `n - 1` = head) gets the multiplier `m_i`, the head always
    exactly 1.0, and the optimizer's base rate is the head's rate `hi`:

    - `lr=slice(lo, hi)`: geometric from `lo / hi` (bottom) to 1 (head), as
      fastai's `even_mults(lo, hi, n) / hi`:

          m_i = (lo / hi) ** ((n - 1 - i) / (n - 1))

    - `lr=slice(hi)`: every group but the head at 0.1 (fastai: body at
      `hi / 10`), `m_i = 0.1` for `i < n - 1`.
    - `factor=f` (ULMFiT uses 2.6): each group `f` times slower than the one
      above it, `m_i = f ** -(n - 1 - i)`.

    Unlike fastai, one group gets 1.0 (no division by zero), and
    `slice(0, hi)` is an error rather than silently meaning `slice(hi)`: no
    geometric spacing starts at 0.

    Give the optimizer the head's rate `hi` as its learning rate (with
    `factor`, whatever rate the head should train at); every group then trains
    at `hi * m_i`, and learning-rate schedules keep the ratios.

    Args:
        groups: A model (split with `difflr.groups(model)`) or a list of
            groups, bottom to head, each a list of layers (or a single layer).
            With a list, variables in no group keep their default multiplier
            1.0: `difflr.groups(model)` covers every trainable variable.
        lr: A `slice(lo, hi)` with `0 < lo <= hi`, or `slice(hi)` with
            `hi > 0`.
        factor: A number >= 1: the ratio between consecutive groups.
            Exactly one of `lr` and `factor` must be given.

    Returns:
        A dict `{layer: multiplier}` covering every layer of every group.

    Raises:
        TypeError: if the groups are malformed, `lr` is not a slice, or
            `factor` is not a number.
        ValueError: if both or neither of `lr` and `factor` are given, if
            `lo <= 0`, `lo > hi`, `factor < 1`, or a variable is in two
            groups.

    Example:

    >>> import keras, difflr
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(8, name="body1")(inputs)
    >>> x = keras.layers.Dense(8, name="body2")(x)
    >>> outputs = keras.layers.Dense(1, name="head")(x)
    >>> model = keras.Model(inputs, outputs)
    >>> rules = difflr.discriminative(model, lr=slice(1e-4, 1e-2))
    >>> {layer.name: round(m, 6) for layer, m in rules.items()}
    {'body1': 0.01, 'body2': 0.1, 'head': 1.0}
    >>> rules = difflr.discriminative(model, factor=2.6)
    >>> {layer.name: round(m, 4) for layer, m in rules.items()}
    {'body1': 0.1479, 'body2': 0.3846, 'head': 1.0}
    >>> model.compile(difflr.LRMultiplier(keras.optimizers.Adam(1e-2), rules),
    ...               loss="mse")
    """
    who = "difflr.discriminative"
    layer_groups = _groups_of(groups, who)
    n = len(layer_groups)
    if (lr is None) == (factor is None):
        raise ValueError(
            f"{who}: give exactly one of `lr=slice(lo, hi)` (or `slice(hi)`) "
            f"and `factor=` (e.g. 2.6); received lr={lr!r}, factor={factor!r}."
        )
    if factor is not None:
        factor = _number(factor, "factor", who)
        if factor < 1:
            raise ValueError(
                f"{who}: `factor` must be >= 1 (each group `factor` times "
                f"slower than the one above it, the head at 1.0); received "
                f"{factor}. For lower groups faster than the head, write the "
                "rule map yourself."
            )
        multipliers = [factor ** -(n - 1 - i) for i in range(n)]
    else:
        multipliers = _slice_multipliers(lr, n, who)
    return _rule_map(layer_groups, multipliers)


def _slice_multipliers(lr, n, who):
    if not isinstance(lr, slice):
        raise TypeError(
            f"{who}: `lr` must be a `slice(lo, hi)` (geometric from lo to hi) "
            f"or `slice(hi)` (body at hi/10); received {lr!r}. A single rate "
            "for every group needs no multipliers: set it on the optimizer."
        )
    if lr.step is not None or lr.stop is None:
        raise ValueError(
            f"{who}: `lr` must be `slice(lo, hi)` or `slice(hi)`; received "
            f"{lr!r}."
        )
    hi = _number(lr.stop, "hi (lr.stop)", who)
    if hi <= 0:
        raise ValueError(f"{who}: the head's rate `hi` must be > 0; received {lr!r}.")
    if lr.start is None:  # fastai's slice(hi): body at hi / 10
        return [0.1] * (n - 1) + [1.0]
    lo = _number(lr.start, "lo (lr.start)", who)
    if lo <= 0:
        raise ValueError(
            f"{who}: in `slice(lo, hi)`, `lo` must be > 0: rates cannot be "
            f"spaced geometrically from {lo}. Received {lr!r}. Use "
            "`slice(hi)` for every group but the head at hi/10, or a small "
            "positive lo."
        )
    if lo > hi:
        raise ValueError(
            f"{who}: in `slice(lo, hi)`, `lo` (the bottom group's rate) must "
            f"be <= `hi` (the head's); received {lr!r}."
        )
    if n == 1:
        return [1.0]
    return [(lo / hi) ** ((n - 1 - i) / (n - 1)) for i in range(n)]


def _number(value, name, who):
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{who}: `{name}` must be a number; received {value!r} of type "
            f"{type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{who}: `{name}` must be finite; received {value}.")
    return value


def _groups_of(groups, who):
    """The groups of a model, or a list of groups checked."""
    if isinstance(groups, (list, tuple)):
        return grouping.check_groups(groups, who)
    grouping.check_model(groups, who)
    return grouping.groups(groups)


def _rule_map(layer_groups, multipliers):
    return {layer: float(m)
            for group, m in zip(layer_groups, multipliers) for layer in group}


def layerwise_decay(*args, **kwargs):
    raise NotImplementedError


def no_decay(*args, **kwargs):
    raise NotImplementedError
