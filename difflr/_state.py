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

import numpy as np
from keras import ops

from difflr import _keras_compat


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

    def tracked_vector(self, values):
        """The entries of `values` (one per position) of the tracked
        variables, as a float32 vector."""
        return np.array([values[i] for i in self.tracked], "float32")


class Multipliers:
    """The multipliers in force: optimizer variables, and their host cache.

    Attributes:
        lr, decay: a Python float per position, the cached values (read them
            after `refresh`).
        lr_vector, decay_vector: the optimizer variables the update reads, a
            float32 entry per index.
        version: incremented at every change, for caches of derived values.
    """

    def __init__(self, layout, lr, decay, lr_vector, decay_vector, on_restored,
                 sync):
        """`on_restored(before)` is called when `refresh` finds values that
        were not written through `write` (`before`: the multipliers cached
        until then); `sync()` makes the variables hold the training state
        where a training loop keeps it elsewhere (JAX's `fit`)."""
        self.layout = layout
        self.lr, self.decay = list(lr), list(decay)
        self.lr_vector, self.decay_vector = lr_vector, decay_vector
        self.version = 0
        self._on_restored, self._sync = on_restored, sync
        self._host = None
        self._stamp = self._stamp_now()

    def write(self, lr, decay):
        """Puts new values in force, from the next step on. (Callers
        `refresh` first: a restore not yet seen would be lost.)"""
        self.lr, self.decay = list(lr), list(decay)
        self.lr_vector.assign(self.layout.tracked_vector(lr))
        self.decay_vector.assign(self.layout.tracked_vector(decay))
        self.version += 1
        self._stamp = self._stamp_now()

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
        lr = ops.convert_to_numpy(self.lr_vector)
        decay = ops.convert_to_numpy(self.decay_vector)
        self._stamp = stamp
        before = list(self.lr)
        changed = False
        for j, i in enumerate(self.layout.tracked):
            # Keep the exact Python value where the float32 copy agrees.
            if np.float32(self.lr[i]) != lr[j]:
                self.lr[i], changed = _as_set(lr[j]), True
            if np.float32(self.decay[i]) != decay[j]:
                self.decay[i], changed = _as_set(decay[j]), True
        if changed:
            self.version += 1
            self._on_restored(before)
        return changed

    def device_key(self):
        """The values in force as the device holds them (float32), hashable:
        equal for two states that train alike."""
        return (self.layout.tracked_vector(self.lr).tobytes(),
                self.layout.tracked_vector(self.decay).tobytes())

    def take(self, lr, decay):
        """Puts the exact values `lr` and `decay` in the cache, where they
        round to what the device holds (a state it was in before)."""
        assert (self.layout.tracked_vector(lr).tobytes(),
                self.layout.tracked_vector(decay).tobytes()) == self.device_key()
        self.lr, self.decay = list(lr), list(decay)
        self.version += 1

    def _stamp_now(self):
        stamps = (_keras_compat.write_stamp(self.lr_vector),
                  _keras_compat.write_stamp(self.decay_vector))
        return None if None in stamps else stamps

    def on_device(self):
        """The values the device holds, as two lists of floats (float32
        values), an entry per index: computed once per change."""
        self.refresh()
        if self._host is None or self._host[0] != self.version:
            self._host = (self.version,
                          self.layout.tracked_vector(self.lr).tolist(),
                          self.layout.tracked_vector(self.decay).tolist())
        return self._host[1], self._host[2]


def _as_set(value):
    """The Python float a float32 `value` was most likely set from: the
    shortest decimal that rounds to it (0.1, not 0.10000000149011612), as
    `set_multipliers` and a loaded file report it. It rounds back to
    `value` exactly, so the device is unchanged."""
    return float(str(np.float32(value)))
