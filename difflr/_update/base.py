"""What every update path shares: the decoupled weight decay at a variable's
own rate, followed by the wrapped optimizer's update."""

from keras import ops

# Variables where the step form is exact to the rounding of the step itself.
FULL_PRECISION = ("float32", "float64")


def decay_then_update(optimizer, original, gradient, variable, rate, decay):
    """`v <- v - decay * v` (decoupled weight decay, `decay` being
    `lr * m * d * weight_decay`, or None), then the wrapped optimizer's own
    `update_step` at `rate` (`lr * m`)."""
    if decay is not None:
        optimizer.assign_sub(variable, variable * ops.cast(decay, variable.dtype))
    original(gradient, variable, rate)
