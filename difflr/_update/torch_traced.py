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
        self._kept = None  # (key, Gathers) of the last eager call

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
        m_all = update.in_step()[0]
        gathers = self._gathers(variables, m_all.device)
        m = m_all[gathers.indices]
        self._decay(variables, gathers, m, learning_rate)
        kernel = (None if update.pause.mode == "hold"
                  else torch_kernels.kernel(update.optimizer, variables))
        if kernel is not None:
            kernel(grads, learning_rate * m, _scalars)
        elif update.step_form:
            _step_form(original, grads, variables, learning_rate, m)
        else:
            self._one_by_one(original, grads, variables, gathers.index_list,
                             learning_rate, m)

    def _gathers(self, variables, device):
        """The `Gathers` of `variables`: run eagerly, kept until the
        variables or the multipliers change (made anew, each of its tensors
        would be a blocking copy from the host per step on an accelerator);
        traced, constants of the graph."""
        if is_tracing():
            return Gathers(self.update.layout, variables, device)
        key = (self.update.multipliers.version, tuple(map(id, variables)))
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, Gathers(self.update.layout, variables, device))
        return self._kept[1]

    def _decay(self, variables, gathers, m, learning_rate):
        if not gathers.decayed_list:
            return
        d = self.update.in_step()[1][gathers.decayed_indices]
        factors = 1 - learning_rate * m[gathers.decayed] * d * gathers.coefficients
        # float32 factors, whatever the variables' dtypes, as eagerly:
        # rounded to bfloat16, a small decay would round away.
        values = [variables[p].value for p in gathers.decayed_list]
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


class Gathers:
    """What the update of a list of variables gathers the multipliers with:
    `indices`, the variables' indices (`index_list` as ints); `decayed`,
    the positions of those with weight decay (`decayed_list` as ints),
    `decayed_indices` their indices and `coefficients` their weight decay
    (float32)."""

    def __init__(self, layout, variables, device):
        self.index_list = [layout.index_of(v) for v in variables]
        self.decayed_list = [p for p, j in enumerate(self.index_list)
                             if layout.weight_decay[j] is not None]

        def tensor(values, dtype=torch.long):
            return torch.tensor(values, dtype=dtype, device=device)

        self.indices = tensor(self.index_list)
        self.decayed = tensor(self.decayed_list)
        self.decayed_indices = tensor([self.index_list[p] for p in self.decayed_list])
        self.coefficients = tensor([layout.weight_decay[self.index_list[p]]
                                    for p in self.decayed_list], torch.float32)


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
