"""The table behind `difflr.summary`, `difflr.plot` and `LearningRateLogger`:
a row per trainable variable of a model, in group order, with the rate it
trains at."""

import numpy as np
from keras import ops

from difflr import grouping
from difflr.lr_multiplier import find_lr_multiplier


def table(model, optimizer, groups, who, sources, complete=True):
    """A row per grouped trainable variable of `model`, in group order.

    Returns a dict with the model's name, the optimizer, whether it is built,
    the step, the base rate and the rows. Each row holds the group index, the
    layer, the variable, its multiplier, decay multiplier and effective rate,
    and with `sources=True` the descriptions of the deciding rules. With
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

    resolution = None
    if opt.built:
        lr = [_in_force(opt.multiplier_for, v, model, who) for v in order]
        decay = [_applied_decay(opt, v) for v in order]
        if sources:
            resolution = opt.resolve(variables, model)
    else:
        # The very call `build` makes, on the variables `fit` builds it for:
        # the preview is what `fit` will resolve.
        resolution = opt.resolve(variables, model)
    if resolution is not None:
        at = {id(v): i for i, v in enumerate(variables)}
        picks = [at[id(v)] for v in order]
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
                "multiplier": lr[k],
                "decay_multiplier": decay[k],
                "effective_lr": base * lr[k],
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
        "step": int(ops.convert_to_numpy(opt.iterations)),
        "base": base,
        "rows": rows,
    }


def _applied_decay(opt, variable):
    """The decay multiplier, or 0 where the wrapped optimizer has weight
    decay but applies none to `variable` (`exclude_from_weight_decay`)."""
    if opt.weight_decay and opt.weight_decay_for(variable) == 0:
        return 0.0
    return opt.decay_multiplier_for(variable)


def _in_force(multiplier_for, variable, model, who):
    try:
        return multiplier_for(variable)
    except ValueError as e:
        raise ValueError(
            f"{who}: {e} The model's trainable variables changed after the "
            "optimizer was built (a layer's `trainable` was set, or the "
            f"optimizer belongs to another model than '{model.name}'). "
            "Compile the model again to train them."
        ) from None


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
