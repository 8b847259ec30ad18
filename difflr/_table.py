"""The table behind `difflr.summary`, `difflr.plot` and `LearningRateLogger`:
a row per trainable variable of a model, in group order, with the rate it
trains at."""

import keras
import numpy as np
from keras import ops

from difflr import _scheduled
from difflr import grouping
from difflr.lr_multiplier import find_lr_multiplier


def table(model, optimizer, groups, who, sources, complete=True):
    """A row per grouped trainable variable of `model`, in group order.

    Returns a dict with the model's name, the optimizer, whether it is built,
    the step, the base rate and the rows. Each row holds the group index, the
    layer, the variable, its multiplier, decay multiplier and effective rate
    at the step (`multiplier`, `decay_multiplier`, `effective_lr`), the
    schedules they follow (`schedule`, `decay_schedule`, or None), and with
    `sources=True` the descriptions of the deciding rules. With
    `complete=False` the groups may leave variables out (they get no row).
    """
    grouping.check_model(model, who)
    if optimizer is None:
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                f"{who}: the model '{model.name}' is not compiled, so it has "
                "no optimizer. Pass one: "
                f"`{who}(model, optimizer=difflr.LRMultiplier(...))`, or "
                "compile the model first."
            )
    opt = find_lr_multiplier(optimizer, who)
    variables = list(model.trainable_variables)
    per_group = group_variables(model, groups, who, complete)
    order = [v for group in per_group for _, v in group]

    step = int(ops.convert_to_numpy(opt.iterations))
    at = _At(step)
    resolution = None
    if opt.built:
        held = [_held(opt, v, model, who, at) for v in order]
        lr, decay = [m for m, _ in held], [d for _, d in held]
        if sources:
            resolution = opt.resolve(variables, model)
    else:
        # The very call `build` makes, on the variables `fit` builds it for:
        # the preview is what `fit` will resolve.
        resolution = opt.resolve(variables, model)
    if resolution is not None:
        index = {id(v): i for i, v in enumerate(variables)}
        picks = [index[id(v)] for v in order]
        if not opt.built:
            lr = [resolution.multipliers[i] for i in picks]
            decay = [resolution.decay_multipliers[i] for i in picks]
        lr_sources = [resolution.sources[i] for i in picks]
        decay_sources = [resolution.decay_sources[i] for i in picks]

    base = float(ops.convert_to_numpy(opt.learning_rate))
    rows = []
    k = 0
    for g, group in enumerate(per_group):
        for layer, v in group:
            row = {
                "group": g,
                "layer": layer,
                "variable": v,
                "params": int(np.prod(v.shape)),
                "multiplier": at(lr[k]),
                "schedule": _schedule(lr[k]),
                "decay_multiplier": at(decay[k]),
                "decay_schedule": _schedule(decay[k]),
                "effective_lr": base * at(lr[k]),
            }
            if sources:
                row["lr_rule"] = lr_sources[k]
                row["decay_rule"] = decay_sources[k]
            rows.append(row)
            k += 1
    return {
        "model": model.name,
        "optimizer": opt,
        "built": opt.built,
        "step": step,
        "base": base,
        "rows": rows,
    }


class _At:
    """Values at one step: a number as it is, a schedule evaluated there
    (once per schedule object, however many variables follow it)."""

    def __init__(self, step):
        self.step = step
        self._done = {}  # id -> (schedule, value): the schedule keeps its id

    def __call__(self, value):
        if not _scheduled.is_schedule(value):
            return value
        done = self._done.get(id(value))
        if done is None:
            done = self._done[id(value)] = (value, _scheduled.value_at(value, self.step))
        return done[1]


def _schedule(value):
    return value if _scheduled.is_schedule(value) else None


def _held(opt, variable, model, who, at):
    """`(lr, decay)` in force for `variable`: each a float, or the schedule
    it follows. The decay is 0 where the wrapped optimizer has weight decay
    but applies none to `variable` (`exclude_from_weight_decay`)."""
    try:
        lr = opt.schedule_for(variable)
        decay = opt.decay_schedule_for(variable)
    except ValueError as e:
        raise ValueError(
            f"{who}: {e} The model's trainable variables changed after the "
            "optimizer was built (a layer's `trainable` was set, or the "
            f"optimizer belongs to another model than '{model.name}'). "
            "Compile the model again to train them."
        ) from None
    lr = opt.multiplier_for(variable) if lr is None else lr
    decay = opt.decay_multiplier_for(variable) if decay is None else decay
    if at(decay) != 0 and opt.weight_decay and opt.weight_decay_for(
            variable, step=at.step) == 0:
        return lr, 0.0
    return lr, decay


def in_force(row):
    """A row's multiplier as it is in force: its schedule, or the number."""
    return row["multiplier"] if row["schedule"] is None else row["schedule"]


def distinct_curves(rows):
    """The first row of each distinct multiplier curve among `rows`, in
    their order (equal numbers, and schedules with the same config, are
    one curve)."""
    first = {}
    for key, row in zip(curve_keys([in_force(r) for r in rows]), rows):
        first.setdefault(key, row)
    return list(first.values())


def curve_keys(values):
    """A hashable key per value (a number or a schedule), equal for equal
    numbers and for schedules with the same config."""
    schedules = _scheduled.Table(values)
    return [("schedule", schedules.index(v)) if _scheduled.is_schedule(v)
            else ("number", v) for v in values]


def curve(value, steps):
    """The values of `value` (a number or a schedule) at `steps` (a 1-d
    int array), as a float64 array: a schedule evaluated on all the steps at
    once where it takes a vector of steps (Keras's own do), else step by
    step."""
    steps = np.asarray(steps)
    if not _scheduled.is_schedule(value):
        return np.full(steps.shape, float(value))
    try:
        values = ops.convert_to_numpy(ops.cast(
            value(ops.convert_to_tensor(steps.astype("int32"))), "float32"))
        if np.shape(values) == steps.shape:
            return np.asarray(values, "float64")
    except Exception:  # a schedule written for a scalar step only
        pass
    return np.array([_scheduled.value_at(value, int(t)) for t in steps])


def base_rate_schedule(opt):
    """The schedule of `opt`'s base rate, or None where it is a number (or a
    schedule that cannot be rebuilt from its config: see `difflr.plot`)."""
    config = opt.inner_optimizer.get_config().get("learning_rate")
    if not isinstance(config, dict):
        return None
    try:
        return keras.optimizers.schedules.deserialize(config)
    except Exception:  # a custom schedule that is not registered
        return None


def group_variables(model, groups, who, complete):
    """The trainable variables of each group, in layer then variable order.

    Returns a list (one item per group, bottom to head) of lists of
    `(layer, variable)` pairs. `groups=None` means `difflr.groups(model)`;
    given groups are checked by `grouping.check_groups`.
    """
    if groups is None:
        groups = grouping.groups(model)
    else:
        groups = grouping.check_groups(groups, who, model=model,
                                       complete=complete)
    return [[(layer, v) for layer in group for v in grouping.trainable_weights(layer)]
            for group in groups]
