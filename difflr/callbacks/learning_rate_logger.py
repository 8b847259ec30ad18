"""Logs the effective learning rate of each layer group, once per epoch."""

import warnings

import keras

from difflr import _table
from difflr import grouping

_WHO = "LearningRateLogger"
# Next to Keras's own "learning_rate"; TensorBoard shows the groups together.
_PREFIX = "learning_rate/"


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the effective learning rate of each group to the epoch logs.

    At the end of every epoch, for each group `g` (bottom to head), it adds

        logs["learning_rate/<name of g>"] = learning_rate(step) * max_{v in g} m_v

    where `learning_rate(step)` is the optimizer's base rate as Keras logs it
    under `"learning_rate"` (a schedule evaluated at the current
    `iterations`), and `m_v` the multiplier in force for variable `v`: a
    multiplier that follows a schedule is evaluated at that same step, so
    each value is the rate the group trains at in the next step. A group
    whose variables have different multipliers (say a bias at 2x, or a
    kernel on a schedule of its own) logs the largest, so the key set never
    changes from one epoch to the next and 0 means the whole group is
    frozen (or its schedule at 0); a warning names such groups when training
    begins, and `difflr.summary(model, expand=True)` shows each variable. (With `difflr.discriminative` or `GradualUnfreezing`, whose
    rules are per group, every group has one multiplier.)

    The keys reach `History` (`model.fit(...).history["learning_rate/group_0"]`),
    `CSVLogger`, `TensorBoard` and every callback placed after this one: put
    this callback before `TensorBoard` and `CSVLogger` in the `callbacks`
    list, and before any `History` instance of your own (the one Keras
    adds itself always comes last).

    Args:
        groups (list | None): The groups, bottom to head: a list whose items
            are lists of layers (or single layers). Defaults to
            `difflr.groups(model)`, computed when training begins. The groups
            need not cover every variable: only the given ones are logged.
        names (list[str] | None): Optional names of the groups, one string per
            group, used in the keys. Defaults to `group_0`, `group_1`, ...

    Raises:
        TypeError: when training begins, if the model's optimizer is not a
            `difflr.LRMultiplier` (possibly inside a `LossScaleOptimizer`).
        ValueError: if `names` does not give one distinct non-empty string per
            group, or if the groups hold variables that are not trainable
            variables of the model, or one variable twice.

    Example:

    >>> import keras, numpy as np, difflr
    >>> inputs = keras.Input((3,))
    >>> body = keras.layers.Dense(4, name="body")
    >>> head = keras.layers.Dense(1, name="head")
    >>> model = keras.Model(inputs, head(body(inputs)))
    >>> model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.01),
    ...                                   {body: 0.1}), loss="mse")
    >>> difflr.groups(model)
    [[body],
     [head]]
    >>> logger = difflr.callbacks.LearningRateLogger(names=["body", "head"])
    >>> history = model.fit(np.ones((4, 3)), np.zeros((4, 1)), epochs=2,
    ...                     callbacks=[logger], verbose=0)
    >>> [round(x, 6) for x in history.history["learning_rate/body"]]
    [0.001, 0.001]
    >>> [round(x, 6) for x in history.history["learning_rate/head"]]
    [0.01, 0.01]
    """

    def __init__(self, groups=None, names=None):
        super().__init__()
        if names is not None:
            if isinstance(names, str) or not isinstance(names, (list, tuple)):
                raise TypeError(
                    f"{_WHO}: `names` must be a list of strings, one per "
                    f"group; received {names!r}."
                )
            names = list(names)
            for name in names:
                if not isinstance(name, str) or not name:
                    raise ValueError(
                        f"{_WHO}: every name must be a non-empty string; "
                        f"received {name!r} in {names!r}."
                    )
            if len(set(names)) != len(names):
                raise ValueError(
                    f"{_WHO}: the names {names!r} repeat; each group needs "
                    "its own key."
                )
            if groups is not None and isinstance(groups, (list, tuple)) and (
                    len(names) != len(groups)):
                raise ValueError(
                    f"{_WHO}: {len(names)} names for {len(groups)} groups; "
                    "give one name per group."
                )
        self.groups = groups
        self.names = names
        self._groups = self._keys = None

    def on_train_begin(self, logs=None):
        model = self.model  # on JAX this syncs the training state
        # On TensorFlow the optimizer is built when the first step is traced,
        # after this: `_table.table` then previews the rules as the build will.
        groups = self.groups
        if groups is None:
            groups = grouping.groups(model)
        rows = _table.table(model, None, groups, _WHO, sources=False,
                        complete=False)["rows"]
        count = len(groups)  # checked by `_table.table`
        if self.names is not None and len(self.names) != count:
            raise ValueError(
                f"{_WHO}: {len(self.names)} names {self.names!r} for {count} "
                "groups (from `difflr.groups(model)`); give one name per "
                "group."
            )
        names = self.names or [f"group_{g}" for g in range(count)]
        self._groups, self._keys = groups, [_PREFIX + name for name in names]
        mixed = []
        for g, key in enumerate(self._keys):
            curves = _table.distinct_curves([r for r in rows if r["group"] == g])
            if len(curves) > 1:
                mixed.append(f"'{key}' ({', '.join(map(_describe, curves))})")
        if mixed:
            warnings.warn(
                f"{_WHO}: some groups train at several multipliers, and each "
                f"logs its largest: {'; '.join(mixed)}. "
                "`difflr.summary(model, expand=True)` shows every variable.",
                stacklevel=2,
            )

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return  # nobody to hand the values to
        if self._keys is None:
            self.on_train_begin()
        # Through `self.model` each time: on JAX that syncs the optimizer's
        # variables (the base rate, `iterations`) from the training state.
        rows = _table.table(self.model, None, self._groups, _WHO, sources=False,
                        complete=False)["rows"]
        for g, key in enumerate(self._keys):
            logs[key] = max(r["effective_lr"] for r in rows if r["group"] == g)


def _describe(row):
    if row["schedule"] is None:
        return f"{row['multiplier']:g}"
    return f"{type(row['schedule']).__name__} at {row['multiplier']:g} now"
