"""A built `LRMultiplier`'s own state: where the optimizer's state lives, and
the multipliers in force.

`Layout` says which trainable variables the wrapped optimizer was built for
(the *tracked* ones: the others were frozen at build and have no state, see
`difflr._pause`), their slots, and the weight decay the wrapped optimizer
gives each. `Multipliers` holds the values in force: on the device, one
float32 vector per map with an entry per tracked variable (what the update
reads inside a compiled step, so that a change needs no retracing), and on
the host a Python float per trainable variable (what `multiplier_for` and
`summary` report, and what the eager torch update plans with).

The vectors are optimizer variables, so every Keras path that restores
optimizer state writes them: a checkpoint, `set_weights`, `set_state_tree`,
Orbax, a plain `assign`. They are the truth; the host values are a cache,
checked against the vectors before every read (`refresh`). A change made
other than through `write` is taken over as restored values.
"""

import keras
import numpy as np
from keras import ops

from difflr import _keras_compat
from difflr import _scheduled


class Layout:
    """Which variables the wrapped optimizer keeps state for, and where.

    Attributes:
        variables: every trainable variable the wrapper was built for; a
            variable's *position* is its index here.
        tracked: the positions the wrapped optimizer was built for.
        tracked_variables: those variables; a variable's *index* is its
            place in this list.
        slots: per index, the optimizer's slot variables (momentums, ...).
        global_state: per-step state that is no slot (Nadam's `u_product`).
        weight_decay: per index, the wrapped optimizer's weight decay for
            that variable, or None where it applies none.
    """

    def __init__(self, optimizer, variables, tracked):
        self.optimizer = optimizer
        self.variables = variables
        self.tracked = tracked
        self.tracked_variables = [variables[i] for i in tracked]
        self.slots = _keras_compat.per_variable_slots(optimizer, self.tracked_variables)
        self.global_state = _keras_compat.per_step_state(optimizer, self.slots)
        self.decide_weight_decay()
        self._index = {_keras_compat.var_key(optimizer, v): j
                       for j, v in enumerate(self.tracked_variables)}

    def decide_weight_decay(self):
        """Asks the wrapped optimizer which variables it decays, and how
        much (again after `exclude_from_weight_decay`)."""
        self.weight_decay = [_keras_compat.weight_decay_for(self.optimizer, v)
                             for v in self.tracked_variables]

    def index_of(self, variable):
        """The index of `variable` (a Keras or backend variable), or None if
        it is not tracked."""
        return self._index.get(_keras_compat.var_key(self.optimizer, variable))

    def tracked_vector(self, values, dtype="float32"):
        """The entries of `values` (one per position) of the tracked
        variables, as a vector (float32 unless told)."""
        return np.array([values[i] for i in self.tracked], dtype)


class Vectors:
    """The optimizer variables of `Multipliers`: `lr` and `decay` (float32
    factors), and `lr_index` and `decay_index` (int32 schedule indices, or
    None where the optimizer runs no schedule)."""

    def __init__(self, lr, decay, lr_index=None, decay_index=None):
        self.lr, self.decay = lr, decay
        self.lr_index, self.decay_index = lr_index, decay_index


class Multipliers:
    """The multipliers in force: optimizer variables, and their host cache.

    Attributes:
        lr, decay: per position, the cached values (read them after
            `refresh`): a Python float, or a schedule (`_scheduled`).
        lr_vector, decay_vector: the optimizer variables the update reads, a
            float32 entry per index: the number, or 1 for a schedule.
        lr_index, decay_index: per index, the schedule's place in `table`,
            or -1 (None if the table is empty).
        table: the schedules the step runs, a `_scheduled.Table`.
        version: incremented at every change, for caches of derived values.
    """

    def __init__(self, layout, lr, decay, vectors, table, on_restored, sync):
        """`vectors` holds the optimizer variables (`Vectors`), `table` the
        schedules the step runs (`_scheduled.Table`, empty if none).
        `on_restored(before)` is called when `refresh` finds values that
        were not written through `write` (`before`: the multipliers cached
        until then); `sync()` makes the variables hold the training state
        where a training loop keeps it elsewhere (JAX's `fit`)."""
        self.layout = layout
        self.table = table
        self.lr, self.decay = list(lr), list(decay)
        self.lr_vector, self.decay_vector = vectors.lr, vectors.decay
        self.lr_index, self.decay_index = vectors.lr_index, vectors.decay_index
        self.version = 0
        self._on_restored, self._sync = on_restored, sync
        self._host = None
        self._scheduled = (None, False)
        self._stamp = self._stamp_now()

    @property
    def vectors(self):
        """The optimizer variables, factors first, then schedule indices
        (those only where the table has schedules)."""
        indices = [] if self.lr_index is None else [self.lr_index, self.decay_index]
        return [self.lr_vector, self.decay_vector] + indices

    @property
    def scheduled(self):
        """Whether some variable's multiplier follows a schedule now."""
        if self._scheduled[0] != self.version:
            self._scheduled = (self.version, any(
                map(_scheduled.is_schedule, self.lr + self.decay)))
        return self._scheduled[1]

    def write(self, lr, decay):
        """Puts new values in force, from the next step on. (Callers
        `refresh` first: a restore not yet seen would be lost.)

        Raises:
            ValueError: for a schedule the table does not hold.
        """
        arrays = self._device_arrays(lr, decay)  # (raises before any write)
        for vector, array in zip(self.vectors, arrays):
            vector.assign(array)
        self.lr, self.decay = list(lr), list(decay)
        self.version += 1
        self._stamp = self._stamp_now()

    def _device_arrays(self, lr, decay):
        """What the vectors hold for `lr` and `decay` (a value per
        position): the factors, then the schedule indices if any."""
        (lr_factors, lr_indices), (decay_factors, decay_indices) = (
            self.table.split(lr), self.table.split(decay))
        arrays = [self.layout.tracked_vector(lr_factors),
                  self.layout.tracked_vector(decay_factors)]
        if self.lr_index is not None:
            arrays += [self.layout.tracked_vector(lr_indices, "int32"),
                       self.layout.tracked_vector(decay_indices, "int32")]
        return arrays

    def in_step(self, step):
        """`(m, d)`, the multipliers at `step` as float32 tensors, an entry
        per index: the vectors, times their schedules' values where the
        table has any (each schedule computed once)."""
        m, d = _read(self.lr_vector), _read(self.decay_vector)
        if self.lr_index is None:
            return m, d
        # Each schedule evaluated once for both (eagerly, each evaluation
        # copies its constants from the host).
        values = self.table.values(step)
        return (m * self.table.scale(self.lr_index, values),
                d * self.table.scale(self.decay_index, values))

    def refresh(self):
        """Brings the cache up to date with the vectors.

        Cheap when nothing wrote them (`_keras_compat.write_stamp`); else
        they are read back, and values that differ from the cache are taken
        over and reported to `on_restored`.

        Returns:
            Whether values were taken over.
        """
        if _keras_compat.is_purged(self.lr_vector):
            self._sync()  # inside a JAX fit: the values are in its state
            if _keras_compat.is_purged(self.lr_vector):
                # A fit this thread cannot reach (an async callback): its
                # variables would read as their initial values. Only `write`
                # changes them during a fit, so the cache is what they hold.
                return False
        stamp = self._stamp_now()
        if _keras_compat.same_stamps(stamp, self._stamp):
            return False
        held = [ops.convert_to_numpy(v) for v in self.vectors]
        self._stamp = stamp
        before = (list(self.lr), list(self.decay))
        changed = False
        for values, factors, indices in ((self.lr, held[0], held[2:3]),
                                         (self.decay, held[1], held[3:4])):
            for j, i in enumerate(self.layout.tracked):
                found = self._held_value(factors[j], indices[0][j] if indices else -1)
                if not self._same(values[i], found):
                    values[i], changed = found, True
        if changed:
            self.version += 1
            self._on_restored(before[0])
        return changed

    def _same(self, value, held):
        """Whether a cached value is what the device holds (`held`)."""
        if _scheduled.is_schedule(value) != _scheduled.is_schedule(held):
            return False
        if _scheduled.is_schedule(value):
            return self.table.index(value) == self.table.index(held)
        return np.float32(value) == np.float32(held)

    def _held_value(self, factor, index):
        """The value a vector entry stands for: a schedule of the table, or
        the number (see `_as_set`)."""
        return self.table.schedules[index] if index >= 0 else _as_set(factor)

    def device_key(self):
        """The values in force as the device holds them (float32 factors,
        schedule indices), hashable: equal for two states that train
        alike."""
        return tuple(a.tobytes() for a in self._device_arrays(self.lr, self.decay))

    def take(self, lr, decay):
        """Puts the exact values `lr` and `decay` in the cache, where they
        are what the device holds (a state it was in before)."""
        assert tuple(a.tobytes() for a in self._device_arrays(lr, decay)) == self.device_key()
        self.lr, self.decay = list(lr), list(decay)
        self.version += 1

    def _stamp_now(self):
        stamps = tuple(_keras_compat.write_stamp(v) for v in self.vectors)
        return None if None in stamps else stamps

    def on_device(self):
        """The constant factors the device holds, as two lists of floats
        (float32 values), an entry per index: computed once per change.
        (1 for a schedule: see `in_step`.)"""
        self.refresh()
        if self._host is None or self._host[0] != self.version:
            arrays = self._device_arrays(self.lr, self.decay)
            self._host = (self.version, arrays[0].tolist(), arrays[1].tolist())
        return self._host[1], self._host[2]

    def schedule_indices(self):
        """`(lr, decay)`: per index, the place in `table` of the schedule
        each follows, or -1 (two lists of -1 without schedules)."""
        arrays = self._device_arrays(self.lr, self.decay)
        if len(arrays) == 2:
            return [-1] * len(arrays[0]), [-1] * len(arrays[0])
        return arrays[2].tolist(), arrays[3].tolist()

    def at(self, value, step):
        """A cached value as a float at `step` (a schedule's value there)."""
        return (_scheduled.value_at(value, step) if _scheduled.is_schedule(value)
                else value)


def _read(variable):
    """A variable's value as a tensor. On torch, the tensor itself: Keras
    3.12's `convert_to_tensor` breaks a torch.compile graph there."""
    if keras.backend.backend() == "torch":
        return variable.value
    return ops.convert_to_tensor(variable)


def _as_set(value):
    """The Python float a float32 `value` was most likely set from: the
    shortest decimal that rounds to it (0.1, not 0.10000000149011612), as
    `set_multipliers` and a loaded file report it. It rounds back to
    `value` exactly, so the device is unchanged."""
    return float(str(np.float32(value)))
