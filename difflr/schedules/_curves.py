"""The schedules' curves, written once for `keras.ops` and for NumPy.

`xp` is either module: a schedule evaluates its curve with `keras.ops` inside
the step, and `difflr.fine_tune` lays out a whole cycle on the host with
NumPy (one backend op per step would be slow, and JAX would compile each op
anew for every length).
"""

import math


def one_cycle(xp, step, schedule):
    """The rate of a `OneCycle` `schedule` at float32 `step`s."""
    pos = xp.minimum(step / float(schedule.total_steps), 1.0)
    peak, start = schedule.max_lr, schedule.max_lr / schedule.div
    end = schedule.max_lr / schedule.div_final
    pct_start = schedule.pct_start
    # With pct_start == 0 the rising phase is never selected; the substitute
    # divisor only keeps its (unused) branch finite.
    rising = cos_anneal(xp, start, peak, pos / (pct_start or 1.0))
    falling = cos_anneal(xp, peak, end, (pos - pct_start) / (1.0 - pct_start))
    return xp.where(xp.less(pos, pct_start), rising, falling)


def cos_anneal(xp, start, end, fraction):
    """fastai's `sched_cos`: from `start` at 0 to `end` at 1, cosine-shaped.

    `start + (1 + cos(pi * (1 - x))) * (end - start) / 2`, written as
    `start * sin(h)**2 + end * cos(h)**2` with `h = pi * (1 - x) / 2`: the
    same number, but a sum of two non-negative terms, so that float32 keeps
    its relative precision near a tiny `end` (`max_lr / 1e5`) instead of
    cancelling `start - start`.
    """
    half_angle = (math.pi / 2.0) * (1.0 - fraction)
    return (start * xp.square(xp.sin(half_angle))
            + end * xp.square(xp.cos(half_angle)))
