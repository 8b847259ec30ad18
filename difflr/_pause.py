"""Freezing and pausing: everything a multiplier of 0 does.

A multiplier of 0 stops a variable. What happens to its optimizer state
depends on when the 0 is set.

**Frozen at build.** A variable whose multiplier is 0 when the optimizer is
built gets no optimizer state at all: the wrapped optimizer is built for the
other variables only (`tracked_positions`), and the variable's gradient is
dropped as if it were not trainable. Frozen costs nothing, but such a
variable cannot be given a non-zero multiplier later (`check_unfreezable`
says so). With `keep_frozen_state=True` every variable gets state, and a
loaded optimizer gives state to the variables that had it when saved.

**Paused later.** A variable set to 0 after the build (`set_multipliers`,
`GradualUnfreezing`) is *paused*: from the next step on it does not move, as
a PyTorch parameter group with `lr=0`. Its state goes on as its own copy of
the optimizer would at learning rate 0, wherever that is well defined
(`mode` "run"): Adam's moments keep tracking the gradients, so its bias
correction is right when the variable resumes. A velocity (SGD's and
RMSprop's momentum, which holds the rate times averaged gradients and would
still move the variable) is cleared as the pause begins (`clear_velocities`),
and at rate 0 it stays 0. Where rate 0 is not well defined (Ftrl divides by
it) or not known (optimizers that are not Keras's own), the variable and its
state are both held (`mode` "hold"): inside a compiled step, the wrapped
optimizer's writes to them keep their old values wherever the multiplier is
0 (`guard_write`, or `restore` for an update that may write around
`optimizer.assign*`); on torch, which runs eagerly, a held variable is simply
left out of the update.
"""

import contextlib

import keras
from keras import ops

from difflr import _keras_compat
from difflr import _scheduled


def tracked_positions(lr, keep_frozen_state=False, had_state=None):
    """The positions the wrapped optimizer is built for: every variable whose
    multiplier `lr[i]` is not 0, all with `keep_frozen_state`, and those that
    `had_state` when a loaded optimizer was saved. A model with no trainable
    variables trains nothing, as with a plain optimizer (its metrics and
    normalization statistics still update); one whose variables are all
    frozen is an error. A multiplier that follows a schedule is never 0
    here: difflr cannot know that a schedule stays at 0 for every step, so
    a scheduled variable always gets optimizer state."""
    had_state = had_state or [False] * len(lr)
    tracked = [i for i, m in enumerate(lr)
               if m != 0 or keep_frozen_state or had_state[i]]
    if lr and not tracked:
        raise ValueError(
            "Every trainable variable has learning-rate multiplier 0, so "
            "there is nothing to train. Set `trainable=False` on frozen "
            "layers, or pass `keep_frozen_state=True` to unfreeze later."
        )
    return tracked


def check_unfreezable(layout, lr):
    """Raises if a variable frozen at build would get a non-zero multiplier."""
    tracked = set(layout.tracked)
    for i, m in enumerate(lr):
        if m != 0 and i not in tracked:
            m = _scheduled.describe(m) if _scheduled.is_schedule(m) else m
            raise ValueError(
                f"Variable '{layout.variables[i].path}' had multiplier 0 when "
                "the optimizer was built, so it has no optimizer state and "
                f"cannot be given multiplier {m} now. Build the optimizer "
                "with `keep_frozen_state=True` to unfreeze variables later, "
                "or compile the model again with a new optimizer."
            )


def mode(optimizer):
    """`"run"`: a paused variable's state moves as at learning rate 0, which
    leaves the variable where it is (Keras's own optimizers whose rate enters
    linearly, `_keras_compat.scaling`, and RMSprop); `"hold"`: its state is
    held too (anything else)."""
    if (_keras_compat.scaling(optimizer)
            or _keras_compat.updates_as(optimizer, keras.optimizers.RMSprop)):
        return "run"
    return "hold"


class Pause:
    """A built optimizer's pausing: its mode, the state to hold or clear.

    Attributes:
        mode: `"run"` or `"hold"` (see `mode`).
        held: per index, the keys of the variable and its slots, whose
            writes are held while it is paused (`"hold"` only).
        velocities: per index, the velocity slots cleared as a pause begins.
    """

    def __init__(self, optimizer, layout):
        self.optimizer = optimizer
        self.layout = layout
        self.mode = mode(optimizer)
        self.held = [
            frozenset(_keras_compat.var_key(optimizer, t) for t in [v] + slots)
            if self.mode == "hold" else frozenset()
            for v, slots in zip(layout.tracked_variables, layout.slots)
        ]
        self.velocities = _keras_compat.velocity_slots(optimizer, layout.tracked_variables)
        self._current = None  # (paused, keys) while `holding`

    def clear_velocities(self, lr, before=None):
        """Zeroes the velocity of every variable whose pause begins: whose
        multiplier is 0 in `lr` and was not in `before` (None: every paused
        variable, as after a restore)."""
        for j, i in enumerate(self.layout.tracked):
            if lr[i] == 0 and (before is None or before[i] != 0):
                for slot in self.velocities[j]:
                    slot.assign(ops.zeros(slot.shape, slot.dtype))

    @contextlib.contextmanager
    def holding(self, paused, index):
        """Inside: the writes to the variable `index` and its slots are held
        where `paused` (a boolean scalar tensor) is true."""
        self._current = (paused, self.held[index])
        try:
            yield
        finally:
            self._current = None

    def guard_write(self, target, value, kind):
        """The value the wrapped optimizer writes into `target` (`kind` is
        `"assign"`, `"assign_add"` or `"assign_sub"`): unchanged, or what
        keeps the target as it is where its variable is paused.

        Costs one `where` per guarded write (fused into the update on XLA).
        """
        current = self._current
        if current is None or _keras_compat.var_key(
                self.optimizer, target) not in current[1]:
            return value
        paused = current[0]
        value = read(value)  # an optimizer may write a variable of its own
        sparse = _is_indexed_slices(value)
        values = value.values if sparse else value
        if kind != "assign":
            keep = 0  # add or subtract nothing
        elif sparse:
            keep = ops.take(read(target), value.indices, axis=0)
        else:
            keep = read(target)
        values = ops.where(paused, keep, values)
        return type(value)(values, value.indices, value.dense_shape) if sparse else values

    def restore(self, update, paused, index):
        """Runs `update()`, then puts back the old values of the variable
        `index` and its slots where `paused`: for an update that is not
        Keras's own, which may write around `optimizer.assign*`."""
        targets = [self.layout.tracked_variables[index]] + self.layout.slots[index]
        before = [ops.copy(read(t)) for t in targets]
        update()
        for target, old in zip(targets, before):
            self.optimizer.assign(target, ops.where(paused, old, read(target)))


def _is_indexed_slices(value):
    """A sparse gradient-like value (TensorFlow's `IndexedSlices`)."""
    return all(hasattr(value, a) for a in ("values", "indices", "dense_shape"))


def read(variable):
    """The current value of a Keras or backend variable, as a tensor."""
    return variable.value if isinstance(variable, keras.Variable) else variable
