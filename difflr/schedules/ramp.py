import keras
from keras import ops

from difflr import _checks


@keras.saving.register_keras_serializable(package="difflr")
class Ramp(keras.optimizers.schedules.LearningRateSchedule):
    """A linear ramp between two plateaus: a warm-up, or a smooth unfreezing.

    Holds `initial` until step `start`, moves linearly to `value` over
    `steps` optimizer steps, then holds `value`. At optimizer step `t` (0
    for the first step, the optimizer's `iterations`):

        f(t) = clip((t - start) / steps, 0, 1)       (steps > 0)
        f(t) = 1 if t >= start else 0                (steps = 0: a jump)
        r(t) = initial * (1 - f(t)) + value * f(t)

    so `r(start) = initial` and `r(start + steps) = value`, exactly: optax's
    `linear_schedule(initial, value, steps, transition_begin=start)`, the
    warm-up of Keras's `CosineDecay` (`warmup_steps`) and PyTorch's usual
    `LambdaLR(optimizer, lambda t: min(t / steps, 1))` are the same line.

    Meant as a rule's value in `difflr.LRMultiplier`, where the multiplier
    of a group at step `t` is `r(t)` and its rate `learning_rate(t) * r(t)`:

    - a **head warm-up**: `{body: Ramp(start=n, steps=k, value=0.1)}` keeps
      the body at 0 while the new head trains alone for `n` steps, then
      brings it to a tenth of the head's rate over `k` steps;
    - a **smooth unfreezing**: one ramp per group, starting later for each
      group further from the head (see the recipes in the docs).

    It is also a plain `LearningRateSchedule`, which any Keras optimizer
    takes as its learning rate.

    Args:
        start (int): The step the ramp begins at, an integer >= 0: before
            it, and at it, the value is `initial`.
        steps (int): How many steps the ramp lasts, an integer >= 0. With 0,
            the value jumps from `initial` to `value` at step `start`.
        value (float): The value from step `start + steps` on, a finite
            number >= 0. Defaults to 1.0 (the rate of the rule it replaces:
            the base rate times 1).
        initial (float): The value up to step `start`, a finite number
            >= 0. Defaults to 0.0 (frozen). It may be above `value`: a ramp
            down.
        name (str): Optional name. Defaults to `"Ramp"`.

    Raises:
        ValueError, TypeError: if an argument is out of range or of the
            wrong type.

    Example:

    >>> import keras, difflr
    >>> ramp = difflr.schedules.Ramp(start=100, steps=50, value=0.1)
    >>> [round(float(ramp(t)), 4) for t in (0, 100, 125, 150, 1000)]
    [0.0, 0.0, 0.05, 0.1, 0.1]
    >>> inputs = keras.Input((4,))
    >>> body = keras.layers.Dense(8, name="body")
    >>> model = keras.Model(inputs, keras.layers.Dense(1, name="head")(body(inputs)))
    >>> opt = difflr.LRMultiplier(keras.optimizers.Adam(1e-3), {body: ramp})
    >>> opt.build(model.trainable_variables)
    >>> opt.multiplier_for(body.kernel)  # at the current step, 0
    0.0
    >>> round(opt.multiplier_for(body.kernel, step=125), 4)
    0.05
    """

    def __init__(self, start, steps, value=1.0, initial=0.0, name="Ramp"):
        super().__init__()
        who = "Ramp"
        self.start = _checks.integer(start, "start", who)
        self.steps = _checks.integer(steps, "steps", who)
        self.value = _checks.number(value, "value", who, low=0)
        self.initial = _checks.number(initial, "initial", who, low=0)
        if not isinstance(name, str):
            raise TypeError(f"{who}: `name` must be a string; received {name!r}.")
        self.name = name

    def __call__(self, step):
        with keras.name_scope(self.name):
            t = ops.cast(step, "float32")
            if self.steps:
                f = ops.clip((t - float(self.start)) / float(self.steps), 0.0, 1.0)
            else:
                f = ops.cast(ops.greater_equal(t, float(self.start)), "float32")
            # (Written as a weighted sum, each end is exactly its value.)
            return self.initial * (1.0 - f) + self.value * f

    def get_config(self):
        return {"start": self.start, "steps": self.steps, "value": self.value,
                "initial": self.initial, "name": self.name}
