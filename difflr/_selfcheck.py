"""The contract, checked: each variable against its own copy of the optimizer.

`python -m difflr check` and the test suite use this harness. The reference
side uses only plain Keras optimizers, one per variable, built at
`learning_rate * m` and `weight_decay * d`: it shares no code with the
wrapper it checks.
"""

import inspect

import numpy as np
import keras

import difflr

LR = 0.01
WD = 0.05
SHAPES = [(3, 4), (4,), (2, 3), (5,)]
LR_MULTS = [0.1, 1.0, 2.5, 0.3]
DECAY_MULTS = [1.0, 0.0, 2.0, 0.5]
STEPS = 4


class Scaled(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step) * factor`: the reference copy's own schedule."""

    def __init__(self, schedule, factor):
        self.schedule, self.factor = schedule, factor

    def __call__(self, step):
        return self.schedule(step) * self.factor


def _optimizers():
    O = keras.optimizers
    cases = {
        "sgd": lambda lr, **kw: O.SGD(lr, **kw),
        "sgd_momentum": lambda lr, **kw: O.SGD(lr, momentum=0.9, **kw),
        "sgd_momentum_nesterov": lambda lr, **kw: O.SGD(lr, momentum=0.9, nesterov=True, **kw),
        "adam": lambda lr, **kw: O.Adam(lr, **kw),
        "adam_amsgrad": lambda lr, **kw: O.Adam(lr, amsgrad=True, **kw),
        "adamw": lambda lr, **kw: O.AdamW(lr, **kw),
        "adamax": lambda lr, **kw: O.Adamax(lr, **kw),
        "adagrad": lambda lr, **kw: O.Adagrad(lr, **kw),
        "adadelta": lambda lr, **kw: O.Adadelta(lr, **kw),
        "rmsprop_centered_momentum": lambda lr, **kw: O.RMSprop(lr, momentum=0.5, centered=True, **kw),
        "nadam": lambda lr, **kw: O.Nadam(lr, **kw),
        "ftrl": lambda lr, **kw: O.Ftrl(lr, l1_regularization_strength=0.01, **kw),
        "lion": lambda lr, **kw: O.Lion(lr, **kw),
        "lamb": lambda lr, **kw: O.Lamb(lr, **kw),
        "adafactor": lambda lr, **kw: O.Adafactor(lr, **kw),
    }
    if hasattr(O, "Muon"):
        cases["muon"] = lambda lr, **kw: O.Muon(lr, **kw)
    if hasattr(O, "ScheduleFreeAdamW"):
        cases["schedule_free_adamw"] = lambda lr, **kw: O.ScheduleFreeAdamW(lr, **kw)
    return cases


OPTIMIZERS = _optimizers()


def gradients(steps, shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(steps)]


def variables(shapes, seed=1, prefix="v", dtype="float32"):
    rng = np.random.default_rng(seed)
    return [
        keras.Variable(rng.normal(size=s).astype("float32"), name=f"{prefix}{i}",
                       dtype=dtype)
        for i, s in enumerate(shapes)
    ]


def run_wrapped(make, lr_mults, decay_mults, grads, shapes=SHAPES, wd=WD, lr=LR,
                dtype="float32", **kwargs):
    vs = variables(shapes, dtype=dtype)
    opt = difflr.LRMultiplier(
        make(lr, **wd, **kwargs) if isinstance(wd, dict) else make(lr, weight_decay=wd, **kwargs),
        multipliers=[(v, m) for v, m in zip(vs, lr_mults)],
        decay_multipliers=[(v, d) for v, d in zip(vs, decay_mults)],
    )
    for step_grads in grads:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step_grads], vs)
    return opt, vs


def run_reference(make, lr_mults, decay_mults, grads, shapes=SHAPES, wd=WD, lr=LR,
                  clip_globally=None, dtype="float32", **kwargs):
    """One plain optimizer per variable, built at lr * m and wd * d."""
    vs = variables(shapes, dtype=dtype)
    if clip_globally is not None:
        grads = [_clip_by_global_norm(step, clip_globally) for step in grads]
    for i, v in enumerate(vs):
        scaled_lr = Scaled(lr, lr_mults[i]) if callable(lr) else lr * lr_mults[i]
        if isinstance(wd, dict):
            scaled_wd = {k: w * decay_mults[i] for k, w in wd.items()}
            opt = make(scaled_lr, **scaled_wd, **kwargs)
        else:
            opt = make(scaled_lr, weight_decay=wd * decay_mults[i], **kwargs)
        for step_grads in grads:
            opt.apply([keras.ops.convert_to_tensor(step_grads[i])], [v])
    return vs


def _clip_by_global_norm(grads, clip):
    norm = np.sqrt(sum(float(np.sum(g.astype("float64") ** 2)) for g in grads))
    return [g * (clip / max(norm, clip)) for g in grads]


def wd_kwargs(name, wd):
    """Weight-decay arguments of optimizer `name` (Muon, from Keras 3.13, has
    a second decay for the variables it trains with AdamW)."""
    if name == "muon" and "adam_weight_decay" in inspect.signature(
            keras.optimizers.Muon).parameters:
        return {"weight_decay": wd, "adam_weight_decay": wd}
    return {"weight_decay": wd}


def max_error(name, steps=STEPS):
    """Largest |wrapped - reference| over all variables for optimizer `name`."""
    make, wd = OPTIMIZERS[name], wd_kwargs(name, WD)
    grads = gradients(steps, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads, wd=wd)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads, wd=wd)
    return max(
        float(np.max(np.abs(keras.ops.convert_to_numpy(w) - keras.ops.convert_to_numpy(r))))
        for w, r in zip(wrapped, reference)
    )
