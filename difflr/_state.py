"""A built `LRMultiplier`'s own state: where the optimizer's state lives, and
the multipliers in force.

`Layout` says which trainable variables the wrapped optimizer was built for
(the *tracked* ones: the others were frozen at build and have no state, see
`difflr._pause`), their slots, and the weight decay the wrapped optimizer
gives each. `Multipliers` holds the values in force twice: on the host, a
Python float per trainable variable (what `multiplier_for` and `summary`
report), and on the device, one float32 vector per map with an entry per
tracked variable (what the update reads inside a compiled step, so that a
change needs no retracing). Both are written together.
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
        self.weight_decay = [_keras_compat.weight_decay_for(optimizer, v)
                             for v in self.tracked_variables]
        self._index = {_keras_compat.var_key(optimizer, v): j
                       for j, v in enumerate(self.tracked_variables)}

    def index_of(self, variable):
        """The index of `variable` (a Keras or backend variable), or None if
        it is not tracked."""
        return self._index.get(_keras_compat.var_key(self.optimizer, variable))

    def tracked_vector(self, values):
        """The entries of `values` (one per position) of the tracked
        variables, as a float32 vector."""
        return np.array([values[i] for i in self.tracked], "float32")


class Multipliers:
    """The multipliers in force, on the host and on the device.

    Attributes:
        lr, decay: a Python float per position.
        lr_vector, decay_vector: the optimizer variables the update reads, a
            float32 entry per index.
        version: incremented at every change, for caches of derived values.
    """

    def __init__(self, layout, lr, decay, lr_vector, decay_vector):
        self.layout = layout
        self.lr, self.decay = lr, decay
        self.lr_vector, self.decay_vector = lr_vector, decay_vector
        self.version = 0
        self._host = None

    def write(self, lr, decay):
        """Puts new values in force, from the next step on."""
        self.lr, self.decay = lr, decay
        self.lr_vector.assign(self.layout.tracked_vector(lr))
        self.decay_vector.assign(self.layout.tracked_vector(decay))
        self.version += 1

    def read(self):
        """Takes the host values from the vectors after these were restored
        (a checkpoint, `set_weights`)."""
        lr = ops.convert_to_numpy(self.lr_vector)
        decay = ops.convert_to_numpy(self.decay_vector)
        for j, i in enumerate(self.layout.tracked):
            # Keep the exact Python value where the float32 copy agrees.
            if np.float32(self.lr[i]) != lr[j]:
                self.lr[i] = float(lr[j])
            if np.float32(self.decay[i]) != decay[j]:
                self.decay[i] = float(decay[j])
        self.version += 1

    def on_device(self):
        """The vectors' values as two lists of floats, an entry per index:
        read back from the device once per change."""
        if self._host is None or self._host[0] != self.version:
            self._host = (self.version,
                          ops.convert_to_numpy(self.lr_vector).tolist(),
                          ops.convert_to_numpy(self.decay_vector).tolist())
        return self._host[1], self._host[2]
