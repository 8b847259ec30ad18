"""Keras's fused torch SGD with one learning rate per variable.

Restates `keras/src/backend/torch/optimizers/torch_sgd.py` (its
`_parallel_update_step`) with the rate made a per-tensor scalar of the same
`torch._foreach_*` calls, so the variables keep the plain optimizer's kernels
and passes over them, and its rounding:

    b <- momentum * b - lr_i * g;   v <- v + b
    (Nesterov: v <- v - lr_i * g + momentum * b; no momentum: v <- v - lr_i * g)

Keras 3.12.0 to 3.15.1 add `g` with `alpha=-lr` (`_update_3_12`); Keras 3.16
first forms `u = g * -lr` and adds `u` (`_update_3_16`): the same math, other
roundings and one more call.
"""

import torch

from difflr import _keras_compat


def update_with_rates(optimizer, variables):
    """`update(grads, rates, scalars)` for Keras's SGD on `variables` (the
    Keras variables of one fused update, in its order): `rates` is a 1-d
    tensor of the variables' learning rates, and `scalars(vector)` turns a
    1-d tensor into a list of 0-d tensors (the per-tensor scalars)."""
    values = [v.value for v in variables]
    momentum, nesterov = optimizer.momentum, optimizer.nesterov
    buffers = ([b.value for b in _keras_compat.sgd_momentums(optimizer, variables)]
               if momentum != 0 else None)
    if _keras_compat.keras_version() >= (3, 16, 0):
        return _update_3_16(values, buffers, momentum, nesterov)
    return _update_3_12(values, buffers, momentum, nesterov)


def _update_3_12(values, buffers, momentum, nesterov):
    def update(grads, rates, scalars):
        minus = scalars(-rates)  # v + g * (-lr_i): one kernel, as alpha=
        if buffers is None:
            torch._foreach_addcmul_(values, grads, minus)
            return
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_addcmul_(buffers, grads, minus)
        if nesterov:
            torch._foreach_addcmul_(values, grads, minus)
            torch._foreach_add_(values, buffers, alpha=momentum)
        else:
            torch._foreach_add_(values, buffers)

    return update


def _update_3_16(values, buffers, momentum, nesterov):
    def update(grads, rates, scalars):
        updates = torch._foreach_mul(grads, scalars(-rates))  # g * -lr_i
        if buffers is None:
            torch._foreach_add_(values, updates)
            return
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, updates)
        if nesterov:
            torch._foreach_add_(values, updates)
            torch._foreach_add_(values, buffers, alpha=momentum)
        else:
            torch._foreach_add_(values, buffers)

    return update
