"""The per-step update: each variable's rate inside the wrapped optimizer.

The wrapped optimizer runs its own `apply` (clipping, loss scaling, gradient
accumulation, EMA, distribution); difflr only intercepts the calls that
apply a learning rate (`_keras_compat.install_update_hooks`). What happens
there depends on the backend, chosen once, here, at import, as Keras chooses
its backend optimizers:

- `compiled.CompiledUpdate` (TensorFlow, JAX): the step is traced, and the
  multipliers are read from optimizer variables inside it.
- `torch.TorchUpdate` (PyTorch): eager, fused `torch._foreach_*` updates of
  all variables, with the multipliers as host floats; `torch_sgd` and
  `torch_adam` restate Keras's fused kernels with a rate per variable. Under
  torch.compile it hands over to `torch_traced`, which reads them from
  tensors.

Both take the same arguments (the wrapped optimizer, a `_state.Layout`,
`_state.Multipliers` and a `_pause.Pause`) and offer the same methods:
`before_apply()`, `after_apply()`, and the hooks `update_step(original,
gradient, variable, learning_rate)` and `parallel_update_step(original,
grads, variables, learning_rate)`.
"""

import keras

if keras.backend.backend() == "torch":
    from difflr._update.torch import TorchUpdate as Update
else:
    from difflr._update.compiled import CompiledUpdate as Update

__all__ = ["Update"]
