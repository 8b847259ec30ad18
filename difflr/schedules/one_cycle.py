import keras
from keras import ops

from difflr import _checks
from difflr.schedules import _curves


@keras.saving.register_keras_serializable(package="difflr")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """The one-cycle learning-rate schedule, exactly as fastai's `fit_one_cycle`.

    The rate rises from `max_lr / div` to `max_lr` over the first
    `pct_start` of the steps, then falls to `max_lr / div_final`, with cosine
    annealing in both phases (Smith 2018, "super-convergence"; fastai's
    `combined_cos`). At optimizer step `t` (0 for the first step):

        pos = min(t / total_steps, 1)
        cos_anneal(a, b, x) = a + (1 + cos(pi * (1 - x))) * (b - a) / 2
        lr(t) = cos_anneal(max_lr / div, max_lr, pos / pct_start)
                    if pos < pct_start
                else cos_anneal(max_lr, max_lr / div_final,
                                (pos - pct_start) / (1 - pct_start))

    The conventions are fastai's, off-by-ones included: step `t` uses
    `pos = t / total_steps`, so the first step runs at `max_lr / div` and the
    last one (`t = total_steps - 1`) runs just above `max_lr / div_final`,
    which it does not reach. From `t = total_steps` on the rate stays at
    `max_lr / div_final`. (PyTorch's `OneCycleLR` differs: its peak is at step
    `pct_start * total_steps - 1`, its last step reaches the final rate, and
    its `final_div_factor` is relative to the initial rate.) fastai also
    cycles the momentum the other way; Keras schedules only drive the
    learning rate, so the momentum stays as the optimizer has it.

    Given to the optimizer wrapped by `difflr.LRMultiplier`, the schedule
    drives the base rate, so each variable's rate is `lr(t) * m` and every
    multiplier's ratio holds at every step: this is fastai's
    `fit_one_cycle(lr_max=slice(...))`, where every parameter group follows
    the same curve scaled to its own `lr_max`.

    Args:
        max_lr (float): The peak learning rate, a positive number.
        total_steps (int): The number of optimizer steps in the cycle (epochs
            times steps per epoch), a positive integer.
        pct_start (float): The fraction of the steps spent rising, in `[0, 1)`.
            Defaults to `0.25` (fastai's `fit_one_cycle`).
        div (float): The starting rate is `max_lr / div`. Defaults to `25.0`.
        div_final (float): The final rate is `max_lr / div_final`. Defaults to
            `1e5`.
        name (str): Optional name. Defaults to `"OneCycle"`.

    Raises:
        ValueError, TypeError: if an argument is out of range or not a number.

    Example:

    >>> import keras, difflr
    >>> schedule = difflr.schedules.OneCycle(1e-2, total_steps=100)
    >>> round(float(schedule(0)), 6)  # max_lr / div
    0.0004
    >>> round(float(schedule(25)), 6)  # the peak, after pct_start of the steps
    0.01
    >>> round(float(schedule(100)), 9)  # max_lr / div_final from the end on
    1e-07
    >>> opt = difflr.LRMultiplier(keras.optimizers.SGD(schedule))
    """

    def __init__(self, max_lr, total_steps, pct_start=0.25, div=25.0,
                 div_final=1e5, name="OneCycle"):
        super().__init__()
        who = "OneCycle"
        self.max_lr = _checks.number(max_lr, "max_lr", who, low=0, low_open=True)
        self.total_steps = _checks.integer(total_steps, "total_steps", who,
                                           minimum=1)
        self.pct_start = _checks.number(pct_start, "pct_start", who, low=0,
                                        high=1, high_open=True)
        self.div = _checks.number(div, "div", who, low=0, low_open=True)
        self.div_final = _checks.number(div_final, "div_final", who, low=0,
                                        low_open=True)
        self.name = name

    def __call__(self, step):
        with keras.name_scope(self.name):
            return _curves.one_cycle(ops, ops.cast(step, "float32"), self)

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div": self.div,
            "div_final": self.div_final,
            "name": self.name,
        }
