"""Keras's fused torch Adam (and AdamW) with one learning rate per variable.

Restates `keras/src/backend/torch/optimizers/torch_adam.py` (its
`_parallel_update_step`, the same from Keras 3.12.0 to 3.16.0.dev; AdamW
inherits it, its decay being difflr's own) with the rate made a per-tensor
scalar of the same `torch._foreach_*` calls:

    m <- beta_1 * m + (1 - beta_1) * g
    u <- beta_2 * u + (1 - beta_2) * g^2            (AMSGrad: u_hat <- max(u_hat, u))
    v <- v - lr_i * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(u) + epsilon)
"""

import torch

from difflr import _keras_compat
from difflr import _pause


def update_with_rates(optimizer, variables):
    """`update(grads, rates, scalars)` for Keras's Adam on `variables`, as
    `torch_sgd.update_with_rates`."""
    values = [v.value for v in variables]
    beta_1, beta_2 = optimizer.beta_1, optimizer.beta_2
    epsilon, amsgrad = optimizer.epsilon, optimizer.amsgrad
    moments = _keras_compat.adam_moments(optimizer, variables)
    first = [s.value for s in moments[0]]
    second = [s.value for s in moments[1]]
    hats = [s.value for s in moments[2]] if amsgrad else None
    dtype, device = values[0].dtype, values[0].device
    beta_1_t = torch.tensor(beta_1, dtype=dtype, device=device)
    beta_2_t = torch.tensor(beta_2, dtype=dtype, device=device)

    def update(grads, rates, scalars):
        # The tensor, not the Keras variable: `variable + 1` would copy the 1
        # from the host, a blocking copy on an accelerator.
        step = (_pause.read(optimizer.iterations) + 1).to(dtype)
        alphas = scalars(rates.to(dtype) * torch.sqrt(1 - torch.pow(beta_2_t, step))
                         / (1 - torch.pow(beta_1_t, step)))
        torch._foreach_mul_(first, beta_1)
        torch._foreach_add_(first, grads, alpha=1 - beta_1)
        torch._foreach_mul_(second, beta_2)
        torch._foreach_add_(second, torch._foreach_mul(grads, grads), alpha=1 - beta_2)
        denominators = second
        if amsgrad:
            torch._foreach_maximum_(hats, second)
            denominators = hats
        torch._foreach_add_(
            values,
            torch._foreach_div(
                torch._foreach_mul(first, alphas),
                torch._foreach_add(torch._foreach_sqrt(denominators), epsilon),
            ),
            alpha=-1,
        )

    return update
