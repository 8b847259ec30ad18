"""The progress of gradual unfreezing, kept in the optimizer's variables.

`GradualUnfreezing` (and `fine_tune`) set multipliers epoch by epoch; what
they need to continue a schedule (each variable's rate once unfrozen, the
value they last set it to, the epoch its group opened, and the plateau
state) is written into two integer variables of the `LRMultiplier`, made
when it is built. Every Keras path that saves or restores an optimizer's
variables (`.keras`, `save_weights`, `BackupAndRestore`, Orbax,
`set_state_tree`, JAX's training state) so carries it, with no code of the
user's. The step never reads them.

Floats are stored as their bits: a rate as a float64 (two int32), the value
last set as the float32 the step trains with, so that a resumed schedule
computes exactly what the uninterrupted one did.

The interface: `create` (from `LRMultiplier.build`), `variables` (its
`variables` property), `of` (the callbacks), and a `Progress`'s `read` and
`write` of a `Record`.
"""

import dataclasses
import weakref

import keras
import numpy as np
from keras import ops

from difflr import _keras_compat

EPOCH_DRIVEN, PLATEAU = 1, 2

# Columns of the per-variable table: the rate once unfrozen (float64 bits),
# the value last set (float32 bits), the epoch its group opened + 1 (0: not
# open), and 1 where the row was written.
_RATE, _SET, _OPENED, _WRITTEN = slice(0, 2), 2, 3, 4
_COLUMNS = 5
# The scalars: 1 once written, the mode, the last epoch begun + 1, the last
# epoch ended + 1, the best epoch of the phase + 1 (0: None), and the best
# value (float64 bits).
_STATUS, _MODE, _LAST_BEGUN, _LAST_EPOCH, _BEST_EPOCH = range(5)
_BEST = slice(5, 7)
_SCALARS = 7

_PROGRESS = weakref.WeakKeyDictionary()  # LRMultiplier -> Progress


@dataclasses.dataclass
class Record:
    """What an unfreezing run recorded; dicts are keyed by the position of
    a variable among those the optimizer was built for."""

    mode: int
    rates: dict          # position -> float, the rate once unfrozen
    last_set: dict       # position -> np.float32, the multiplier last set
    opened: dict         # position -> int or None, the epoch its group opened
    last_begun: int = None
    last_epoch: int = None
    best: float = None
    best_epoch: int = None


def create(optimizer, variables):
    """Adds the progress variables to `optimizer`, an `LRMultiplier` being
    built for `variables` (as its own, not the wrapped optimizer's)."""
    add = keras.optimizers.Optimizer.add_variable
    progress = Progress(
        add(optimizer, shape=(len(variables), _COLUMNS), dtype="int32",
            initializer="zeros", aggregation="only_first_replica",
            name="unfreezing_per_variable"),
        add(optimizer, shape=(_SCALARS,), dtype="int32", initializer="zeros",
            aggregation="only_first_replica", name="unfreezing_progress"))
    _PROGRESS[optimizer] = progress
    return progress


def variables(optimizer):
    """The progress variables of `optimizer` (none before it is built)."""
    progress = _PROGRESS.get(optimizer)
    return [] if progress is None else [progress.table, progress.scalars]


def of(optimizer):
    """The `Progress` of a built `LRMultiplier`."""
    return _PROGRESS[optimizer]


class Progress:
    """Reads and writes a `Record` in the two variables."""

    def __init__(self, table, scalars):
        self.table, self.scalars = table, scalars

    def read(self, model):
        """The `Record` in the variables, or None if none was written."""
        _keras_compat.sync_training_state(model)
        scalars = ops.convert_to_numpy(self.scalars).astype("int32")
        if scalars[_STATUS] == 0:
            return None
        table = ops.convert_to_numpy(self.table).astype("int32")
        written = np.flatnonzero(table[:, _WRITTEN])
        return Record(
            mode=int(scalars[_MODE]),
            rates={int(i): float(_float64(table[i, _RATE])) for i in written},
            last_set={int(i): np.array([table[i, _SET]], "<i4").view("<f4")[0]
                      for i in written},
            opened={int(i): _epoch(table[i, _OPENED]) for i in written},
            last_begun=_epoch(scalars[_LAST_BEGUN]),
            last_epoch=_epoch(scalars[_LAST_EPOCH]),
            best=(None if scalars[_BEST_EPOCH] == 0
                  else float(_float64(scalars[_BEST]))),
            best_epoch=_epoch(scalars[_BEST_EPOCH]),
        )

    def write(self, model, record):
        """Writes `record` (its rows, over those of other positions)."""
        _keras_compat.sync_training_state(model)  # (JAX: then written back)
        table = ops.convert_to_numpy(self.table).astype("int32")
        for i, rate in record.rates.items():
            table[i, _RATE] = np.array([rate], "<f8").view("<i4")
            table[i, _SET] = np.array([record.last_set[i]], "<f4").view("<i4")[0]
            table[i, _OPENED] = _stored(record.opened[i])
            table[i, _WRITTEN] = 1
        scalars = np.zeros(_SCALARS, "int32")
        scalars[_STATUS], scalars[_MODE] = 1, record.mode
        scalars[_LAST_BEGUN] = _stored(record.last_begun)
        scalars[_LAST_EPOCH] = _stored(record.last_epoch)
        scalars[_BEST_EPOCH] = _stored(record.best_epoch)
        if record.best_epoch is not None:
            scalars[_BEST] = np.array([record.best], "<f8").view("<i4")
        self.table.assign(table)
        self.scalars.assign(scalars)


def _float64(pair):
    return np.ascontiguousarray(pair, "<i4").view("<f8")[0]


def _epoch(stored):
    return None if stored == 0 else int(stored) - 1


def _stored(epoch):
    return 0 if epoch is None else epoch + 1
