"""What the eager and the traced torch update share: the choice of a
restated fused kernel, and snapshots of per-step state."""

import keras

from difflr import _keras_compat
from difflr._update import torch_adam
from difflr._update import torch_sgd


def kernel(optimizer, variables):
    """Keras's fused update of `optimizer` with one rate per variable, if
    difflr restates it (`torch_sgd`, `torch_adam`), else None."""
    if not _keras_compat.has_fused_update(optimizer):
        return None
    if _keras_compat.updates_as(optimizer, keras.optimizers.SGD):
        return torch_sgd.update_with_rates(optimizer, variables)
    if _keras_compat.updates_as(optimizer, keras.optimizers.Adam):
        return torch_adam.update_with_rates(optimizer, variables)
    return None


def snapshot(variables):
    """Copies of the variables' values, for `restore`."""
    return [(v, v.value.clone()) for v in variables]


def restore(snapshot):
    """Puts back the values of a `snapshot`."""
    for v, value in snapshot:
        v.value.copy_(value)


def each_from_the_step_start(global_state, calls):
    """Runs `calls` (updates of parts of the variables), each from the
    per-step global state (Nadam's) as the step found it, so that it
    advances once per step, not once per call."""
    begin = snapshot(global_state if len(calls) > 1 else ())
    for k, call in enumerate(calls):
        if k:
            restore(begin)
        call()
