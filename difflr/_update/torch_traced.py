"""The update on the torch backend inside `torch.compile` (`jit_compile=True`),
and eagerly while a schedule is in force.

Dynamo specialises a graph on the Python values it reads. The eager update
(`difflr._update.torch`) plans from the multipliers' host floats: traced, it
would be guarded on every one of them, recompiled at every `set_multipliers`
(and, past Dynamo's recompile limit, run eagerly), and reading them back from
the device would break the graph. Inside a compiled step the update depends
on the variables alone and reads the multipliers from the device vectors
(`_state.Multipliers`), as the TensorFlow and JAX step does: a change of
multipliers changes tensor values, not the graph.

For the variables of one fused update, with `m` and `d` gathered from the
vectors:

    v <- v * (1 - lr * m * d * weight_decay)     (decayed variables; 1 where m = 0)
    SGD, Adam, AdamW:  Keras's kernels at the rate lr * m per tensor
                       (`torch_sgd`, `torch_adam`), as the eager "rates" form
    step scaling:      s <- the update at lr from v = 0;  v <- v + m * s
                       (`_keras_compat.scaling` "step"; exact where m is 0)
    anything else:     one call per variable at the rate lr * m

A variable paused where its state must hold (`_pause.mode` "hold") has its
old value and slots put back where m is 0 (`_pause.Pause.restore`), instead
of being left out as eagerly: leaving it out would depend on a value.
"""

import torch

from difflr._update import torch_kernels
from difflr._update.base import decay_then_update


def is_tracing():
    """Whether torch.compile is tracing the current call."""
    return torch.compiler.is_compiling()


class TracedUpdate:
    """The update hooks of `difflr._update.torch.TorchUpdate` while traced."""

    def __init__(self, update):
        self.update = update  # the TorchUpdate: optimizer, layout, ...

    def update_step(self, original, gradient, variable, learning_rate):
        """One variable (optimizers without a fused update)."""
        update = self.update
        index = update.layout.index_of(variable)
        if index is None:
            return original(gradient, variable, learning_rate)
        m_all, d_all = update.in_step()
        m = m_all[index]
        rate = learning_rate * m
        weight_decay = update.layout.weight_decay[index]
        decay = None if weight_decay is None else rate * d_all[index] * weight_decay
        step = lambda: decay_then_update(update.optimizer, original, gradient,
                                         variable, rate, decay)
        if update.pause.mode == "hold":
            return update.pause.restore(step, m == 0, index)
        return step()

    def parallel_update_step(self, original, grads, variables, learning_rate):
        """All variables at once, as Keras's fused update."""
        update = self.update
        indices = [update.layout.index_of(v) for v in variables]
        m = update.in_step()[0][indices]
        self._decay(variables, indices, m, learning_rate)
        kernel = (None if update.pause.mode == "hold"
                  else torch_kernels.kernel(update.optimizer, variables))
        if kernel is not None:
            kernel(grads, learning_rate * m, _scalars)
        elif update.step_form:
            _step_form(original, grads, variables, learning_rate, m)
        else:
            self._one_by_one(original, grads, variables, indices, learning_rate, m)

    def _decay(self, variables, indices, m, learning_rate):
        weight_decay = self.update.layout.weight_decay
        decayed = [p for p, j in enumerate(indices) if weight_decay[j] is not None]
        if not decayed:
            return
        d = self.update.in_step()[1][[indices[p] for p in decayed]]
        coefficients = torch.tensor([weight_decay[indices[p]] for p in decayed],
                                    dtype=m.dtype, device=m.device)
        factors = 1 - learning_rate * m[decayed] * d * coefficients
        # float32 factors, whatever the variables' dtypes, as eagerly:
        # rounded to bfloat16, a small decay would round away.
        values = [variables[p].value for p in decayed]
        torch._foreach_mul_(values, _scalars(factors))

    def _one_by_one(self, original, grads, variables, indices, learning_rate, m):
        pause = self.update.pause

        def call(p):
            step = lambda: original([grads[p]], [variables[p]], learning_rate * m[p])
            if pause.mode == "hold":
                return lambda: pause.restore(step, m[p] == 0, indices[p])
            return step

        torch_kernels.each_from_the_step_start(
            self.update.layout.global_state, [call(p) for p in range(len(variables))])


def _step_form(original, grads, variables, learning_rate, m):
    values = [v.value for v in variables]
    negated = torch._foreach_neg(values)  # the old values wait as -v
    torch._foreach_zero_(values)
    original(grads, variables, learning_rate)
    torch._foreach_mul_(values, [x.to(v.dtype) for x, v in zip(_scalars(m), values)])
    torch._foreach_sub_(values, negated)


def _scalars(vector):
    """The per-tensor scalars of `torch._foreach_*`: traced, views are free."""
    return list(vector.unbind())
