"""The update inside a compiled step (TensorFlow, JAX).

Keras calls the wrapped optimizer's `update_step(gradient, variable,
learning_rate)` once per variable while it traces the train step. The hook
runs it at the variable's own rate,

    v <- v - lr * m * d * weight_decay * v     (decoupled, if weight decay is on)
    v <- update_step(gradient, v, lr * m)

with `m` and `d` read from the multiplier vectors inside the step, so that
`set_multipliers` needs no retracing (times their schedules' values at the
step, where the optimizer has schedules: `_state.Multipliers.in_step`). The vectors are read once per step
(`Rates`), because TensorFlow runs op by op (no XLA on CPU by default), where
a read or a product per variable would be ops per variable.

On JAX, Keras's optimizers whose update is `v <- v - lr * s` (Adam and its
kin, `_keras_compat.scaling` "step") run in the *step form*: the update runs
at the base rate in a zeroed `v`, which leaves `-lr * s` in it, and `v`
becomes `v_decayed + m * (-lr * s)` (exactly `v` where m is 0). Their scalar
math (Adam's bias correction times the rate) is then one computation shared
by all variables, not one per variable: on XLA, one kernel less per variable.

A paused variable (m = 0) is handled by `difflr._pause`.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from difflr import _keras_compat
from difflr import _pause
from difflr._update.base import FULL_PRECISION
from difflr._update.base import decay_then_update


def _traced(tensor):
    """Whether `tensor` belongs to a step being traced (a `jit` or a
    `tf.function`), rather than computed eagerly."""
    if keras.backend.backend() == "jax":
        import jax

        return isinstance(tensor, jax.core.Tracer)
    import tensorflow as tf

    return not tf.executing_eagerly()


class Rates:
    """What one step computes once for all variables, each split into one
    scalar per index (in a traced step, slices of the multiplier vectors):

    - `rates`: `lr * m`, the rate each variable's update runs at;
    - `decays`: `lr * m * d * weight_decay` (None without weight decay);
    - `multipliers`: `m` itself, for the step form, else None;
    - `paused`: whether `m == 0`, where a pause holds the optimizer's writes
      (`_pause.mode` "hold"), else None.
    """

    def __init__(self, update, learning_rate):
        layout = update.layout
        self.learning_rate = learning_rate
        weight_decay = np.array(
            [0.0 if w is None else w for w in layout.weight_decay], "float32")
        decayed = any(w is not None for w in layout.weight_decay)
        # At the step the base rate's own schedule sees.
        m, d = update.multipliers.in_step(
            _keras_compat.schedule_step(update.optimizer))
        if not _traced(m):
            self._split_on_host(update, m, d, learning_rate, weight_decay, decayed)
            return
        rates = ops.multiply(learning_rate, m)
        self.rates = ops.unstack(rates)
        self.decays = ops.unstack(rates * d * weight_decay) if decayed else None
        self.multipliers = ops.unstack(m) if update.step_form else None
        self.paused = (ops.unstack(ops.equal(m, 0.0))
                       if update.pause.mode == "hold" else None)

    def _split_on_host(self, update, m, d, learning_rate, weight_decay, decayed):
        """Run eagerly (a custom loop without `jit` or `tf.function`), each
        slice of a vector would be an op of its own, compiled on JAX for
        every index: the vectors are read once and split on the host."""
        m, d = ops.convert_to_numpy(m), ops.convert_to_numpy(d)
        self.rates = [learning_rate * x for x in m]
        self.decays = ([r * x for r, x in zip(self.rates, d * weight_decay)]
                       if decayed else None)
        self.multipliers = list(m) if update.step_form else None
        self.paused = list(m == 0) if update.pause.mode == "hold" else None


class CompiledUpdate:
    """The update hooks of a built `LRMultiplier` on TensorFlow and JAX."""

    parallel_update_step = None  # a torch backend hook

    def __init__(self, optimizer, layout, multipliers, pause):
        self.optimizer = optimizer
        self.layout = layout
        self.multipliers = multipliers
        self.pause = pause
        # Keras's own optimizers write only through `assign*`: a paused
        # variable's writes are guarded there. Anything else is restored.
        self.guarded = _keras_compat.writes_through_assign(optimizer)
        if self.guarded:
            _keras_compat.install_write_guard(optimizer, pause.guard_write)
        # TensorFlow runs op by op (no XLA on CPU by default), where lr * m
        # is the fewest ops; XLA (JAX) fuses the step form into the update.
        self.step_form = (keras.backend.backend() == "jax"
                          and _keras_compat.scaling(optimizer) == "step")
        self._rates = None  # this trace's `Rates`

    def before_apply(self):
        self._rates = None

    def after_apply(self):
        self._rates = None  # tensors of this trace only

    def rates(self, learning_rate):
        """This step's `Rates`, computed at the first variable's update and
        shared by the others."""
        if self._rates is None or self._rates.learning_rate is not learning_rate:
            self._rates = Rates(self, learning_rate)
        return self._rates

    def update_step(self, original, gradient, variable, learning_rate):
        index = self.layout.index_of(variable)
        if index is None:
            return original(gradient, variable, learning_rate)
        rates = self.rates(learning_rate)
        paused = None if rates.paused is None else rates.paused[index]
        if not self.guarded:
            return self.pause.restore(
                lambda: self._update(original, gradient, variable, rates, index),
                paused, index)
        step = self.step_form and variable.dtype in FULL_PRECISION
        holding = (self.pause.holding(paused, index) if self.pause.held[index]
                   else contextlib.nullcontext())
        with holding:
            self._update(original, gradient, variable, rates, index, step)

    def _update(self, original, gradient, variable, rates, index, step=False):
        """Weight decay at rate lr * m * d, then the wrapped update at lr * m;
        with `step`, in the step form."""
        rate = rates.rates[index]
        decay = None if self.layout.weight_decay[index] is None else rates.decays[index]
        if not step:
            return decay_then_update(self.optimizer, original, gradient, variable,
                                     rate, decay)
        old = _pause.read(variable)
        self.optimizer.assign(variable, ops.zeros_like(old))
        original(gradient, variable, rates.learning_rate)
        new = old if decay is None else old - old * ops.cast(decay, variable.dtype)
        m = rates.multipliers[index]
        self.optimizer.assign(variable, new + ops.cast(m, variable.dtype) * _pause.read(variable))
