import math

import keras
from keras import ops

from difflr import _checks


@keras.saving.register_keras_serializable(package="difflr")
class SlantedTriangular(keras.optimizers.schedules.LearningRateSchedule):
    """ULMFiT's slanted triangular learning rate (Howard & Ruder 2018, eq. 3).

    A short linear rise to `max_lr` over the first `cut_frac` of the steps,
    then a long linear decay back to `max_lr / ratio`. At optimizer step `t`
    (0 for the first step) of `T = total_steps`:

        cut = floor(T * cut_frac)
        p   = t / cut                                      if t < cut
              1 - (t - cut) / (cut * (1 / cut_frac - 1))   otherwise
        lr(t) = max_lr * (1 + p * (ratio - 1)) / ratio

    with `p` clipped at 0 from below. The clip is the one change to the
    paper's formula: when `T * cut_frac` is not an integer, the floor makes
    the decay line reach `p = 0` a little before `T`, and without the clip
    the rate would go on falling below `max_lr / ratio`, even below zero.
    The rate is `max_lr / ratio` at `t = 0`, `max_lr` at `t = cut`, and
    stays at `max_lr / ratio` from `t = T` on.

    Given to the optimizer wrapped by `difflr.LRMultiplier`, the schedule
    drives the base rate, so each variable's rate is `lr(t) * m`: slanted
    triangular learning rates with discriminative fine-tuning, as in ULMFiT.

    Args:
        max_lr (float): The peak learning rate, a positive number.
        total_steps (int): `T`, the number of optimizer steps (epochs times
            steps per epoch), a positive integer with `T * cut_frac >= 1`.
        cut_frac (float): The fraction of the steps spent rising, in `(0, 1)`.
            Defaults to `0.1` (the paper's).
        ratio (float): How much smaller the lowest rate is than `max_lr`, at
            least 1. Defaults to `32` (the paper's).
        name (str): Optional name. Defaults to `"SlantedTriangular"`.

    Raises:
        ValueError, TypeError: if an argument is out of range or not a number,
            or if `total_steps * cut_frac < 1` (no step to rise over).

    Example:

    >>> import keras, difflr
    >>> schedule = difflr.schedules.SlantedTriangular(0.01, total_steps=100)
    >>> round(float(schedule(0)), 8)  # max_lr / ratio
    0.0003125
    >>> round(float(schedule(10)), 6)  # the peak, at cut = floor(100 * 0.1)
    0.01
    >>> round(float(schedule(100)), 8)  # back to max_lr / ratio
    0.0003125
    >>> opt = difflr.LRMultiplier(keras.optimizers.SGD(schedule))
    """

    def __init__(self, max_lr, total_steps, cut_frac=0.1, ratio=32.0,
                 name="SlantedTriangular"):
        super().__init__()
        who = "SlantedTriangular"
        self.max_lr = _checks.number(max_lr, "max_lr", who, low=0, low_open=True)
        self.total_steps = _checks.integer(total_steps, "total_steps", who,
                                           minimum=1)
        self.cut_frac = _checks.number(cut_frac, "cut_frac", who, low=0,
                                       high=1, low_open=True, high_open=True)
        self.ratio = _checks.number(ratio, "ratio", who, low=1)
        self.name = name
        self._cut = math.floor(self.total_steps * self.cut_frac)
        if self._cut < 1:
            raise ValueError(
                f"SlantedTriangular: `total_steps * cut_frac` must be at least "
                f"1, so that the rate has a step to rise over; received "
                f"total_steps={self.total_steps} and cut_frac={self.cut_frac} "
                f"(cut = floor({self.total_steps} * {self.cut_frac}) = 0). Use "
                f"more steps or cut_frac >= {1 / self.total_steps:g}."
            )

    def __call__(self, step):
        with keras.name_scope(self.name):
            t = ops.cast(step, "float32")
            cut = float(self._cut)
            rising = t / cut
            falling = 1.0 - (t - cut) / (cut * (1.0 / self.cut_frac - 1.0))
            p = ops.maximum(ops.where(ops.less(t, cut), rising, falling), 0.0)
            return self.max_lr * (1.0 + p * (self.ratio - 1.0)) / self.ratio

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "cut_frac": self.cut_frac,
            "ratio": self.ratio,
            "name": self.name,
        }
