"""Multipliers that follow the step: a rule's value may be a schedule.

A rule may give a `keras.optimizers.schedules.LearningRateSchedule` instead
of a number: the multiplier at step `t` is `schedule(t)`, `t` being the
wrapped optimizer's `iterations` as its own learning-rate schedule sees it,
so that a variable moves as its own copy of the wrapped optimizer would at

    lr_v(t) = learning_rate(t) * m_v(t)

`Table` holds the distinct schedules an optimizer can run: those in its
rules and resolution when it is built. Inside the step they are evaluated
once each (not once per variable) and spread over the variables by an index
vector, an optimizer variable like the multiplier vectors, so that moving a
group between a constant and a schedule of the table changes values, not the
traced step. A schedule that is not in the table would need a new trace:
`set_multipliers` refuses it (`Table.index`).

Two schedules with the same config are one entry: a schedule loaded from a
file, or made anew with the same arguments, is the one the step runs.
"""

import json
import math

import keras
import numpy as np
from keras import ops

Schedule = keras.optimizers.schedules.LearningRateSchedule


def is_schedule(value):
    return isinstance(value, Schedule)


def check(schedule, what, culprit):
    """Returns `schedule` if it can be run and saved, or raises naming
    `culprit`: its config must round-trip (a built-in or registered custom
    schedule), and its value at step 0 must be a non-negative finite
    number."""
    try:
        _key(schedule)
        keras.optimizers.schedules.deserialize(
            keras.optimizers.schedules.serialize(schedule))
    except Exception as e:  # (whatever a custom `get_config` raises)
        raise TypeError(
            f"The {what} for {culprit} is a schedule, "
            f"{type(schedule).__name__}, that cannot be saved and loaded: "
            f"{type(e).__name__}: {e}. A schedule must implement `get_config` "
            "and be a built-in one or registered with "
            "`@keras.saving.register_keras_serializable()`.") from None
    first = value_at(schedule, 0)
    if not math.isfinite(first) or first < 0:
        raise ValueError(
            f"The {what} for {culprit} is a schedule whose value at step 0 is "
            f"{first}; a multiplier must be a non-negative finite number. "
            "(Only step 0 is checked: a schedule must stay >= 0 at every "
            "step.)")
    return schedule


def value_at(schedule, step):
    """The multiplier `schedule` gives at `step`, a Python float."""
    return float(ops.convert_to_numpy(
        ops.cast(schedule(ops.convert_to_tensor(step)), "float32")))


def name(schedule):
    """`CosineDecay`: the class, for a table's cell."""
    return type(schedule).__name__


def describe(schedule):
    """`CosineDecay(initial_learning_rate=1.5, decay_steps=8, ...)`: the
    class and its config, which tell two schedules of a class apart."""
    try:
        config = dict(schedule.get_config())
    except Exception:  # (checked at parse: only a test double lands here)
        return type(schedule).__name__
    config.pop("name", None)
    arguments = ", ".join(f"{k}={v!r}" for k, v in config.items())
    return f"{type(schedule).__name__}({arguments})"


def to_config(schedule):
    """A JSON-ready form of `schedule`, as a rule value or a saved entry."""
    return {"schedule": keras.optimizers.schedules.serialize(schedule)}


def from_config(value, custom_objects=None):
    """A value saved by `to_config` (a schedule), or the number it is."""
    if isinstance(value, dict) and "schedule" in value:
        return keras.optimizers.schedules.deserialize(
            value["schedule"], custom_objects=custom_objects)
    return value


def _key(schedule):
    return json.dumps(_unshared(keras.optimizers.schedules.serialize(schedule)),
                      sort_keys=True, default=repr)


def _unshared(config):
    """`config` without the ids a `model.save` in progress adds to shared
    objects: the same schedule has one key, saving or not."""
    if isinstance(config, dict):
        return {k: _unshared(v) for k, v in config.items()
                if k != "shared_object_id"}
    if isinstance(config, (list, tuple)):
        return [_unshared(v) for v in config]
    return config


class Table:
    """The distinct schedules an optimizer runs, in a fixed order.

    Attributes:
        schedules: one per entry; an entry's *index* is its place here.
    """

    def __init__(self, values=()):
        self.schedules = []
        self._index = {}  # by key
        self._seen = {}  # by id: (schedule, index), the key is computed once
        for value in values:
            if is_schedule(value) and _key(value) not in self._index:
                self._index[_key(value)] = len(self.schedules)
                self.schedules.append(value)

    def __len__(self):
        return len(self.schedules)

    def index(self, schedule):
        """The index of `schedule` (or of one with its config)."""
        seen = self._seen.get(id(schedule))
        if seen is not None and seen[0] is schedule:
            return seen[1]
        found = self._index.get(_key(schedule))
        if found is not None:
            self._seen[id(schedule)] = (schedule, found)
        if found is None:
            names = ", ".join(describe(s) for s in self.schedules) or "none"
            raise ValueError(
                f"The schedule {describe(schedule)} was not among the "
                "optimizer's rules when it was built, and the compiled step "
                "runs only those (here: "
                f"{names}); a new one would need a new trace. Give every "
                "schedule in the rules the optimizer is built with (a group "
                "may start on a constant and move to its schedule with "
                "`set_multipliers` later), or compile the model again.")
        return found

    def split(self, values):
        """`(factors, indices)` of a list of values: a schedule is factor 1
        at its index, a number is itself at index -1."""
        factors = [1.0 if is_schedule(v) else v for v in values]
        indices = [self.index(v) if is_schedule(v) else -1 for v in values]
        return factors, indices

    def scale(self, indices, values):
        """Per entry of the int vector `indices`, the value of the schedule
        it points to in `values` (`values(step)`), or 1 where it is -1."""
        return ops.take(values, ops.cast(indices, "int32") + 1)

    def values(self, step):
        """`[1, s_0(step), s_1(step), ...]`, float32: the value of index -1
        (no schedule) first, then each schedule's, computed once."""
        values = [ops.cast(s(step), "float32") for s in self.schedules]
        return ops.stack([ops.ones((), "float32")] + values)


def index_vector(indices):
    return np.array(indices, "int32")
