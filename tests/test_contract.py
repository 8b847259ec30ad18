"""The contract: a variable with multiplier m and decay multiplier d moves
exactly as if it had its own copy of the wrapped optimizer, built with
`learning_rate * m` and `weight_decay * d`; global state stays global.

Each case builds the wrapped optimizer over several variables and, as the
independent reference, one plain optimizer per variable built at the scaled
rate, feeds both the same random gradients, and compares every variable.
"""

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, to_numpy

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


def _wd_kwargs(name, wd):
    # AdamW's own default is 0.004; Muon has a second decay for its AdamW part.
    if name == "muon":
        return {"weight_decay": wd, "adam_weight_decay": wd}
    return {"weight_decay": wd}


def _gradients(steps, shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(steps)]


def _variables(shapes, seed=1, prefix="v"):
    rng = np.random.default_rng(seed)
    return [
        keras.Variable(rng.normal(size=s).astype("float32"), name=f"{prefix}{i}")
        for i, s in enumerate(shapes)
    ]


def run_wrapped(make, lr_mults, decay_mults, grads, shapes=SHAPES, wd=WD, lr=LR, **kwargs):
    variables = _variables(shapes)
    opt = difflr.LRMultiplier(
        make(lr, **wd, **kwargs) if isinstance(wd, dict) else make(lr, weight_decay=wd, **kwargs),
        multipliers=[(v, m) for v, m in zip(variables, lr_mults)],
        decay_multipliers=[(v, d) for v, d in zip(variables, decay_mults)],
    )
    for step_grads in grads:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step_grads], variables)
    return opt, variables


def run_reference(make, lr_mults, decay_mults, grads, shapes=SHAPES, wd=WD, lr=LR,
                  clip_globally=None, **kwargs):
    """One plain optimizer per variable, built at lr * m and wd * d."""
    variables = _variables(shapes)
    if clip_globally is not None:
        grads = [_clip_by_global_norm(step, clip_globally) for step in grads]
    for i, v in enumerate(variables):
        scaled_lr = Scaled(lr, lr_mults[i]) if callable(lr) else lr * lr_mults[i]
        if isinstance(wd, dict):
            scaled_wd = {k: w * decay_mults[i] for k, w in wd.items()}
            opt = make(scaled_lr, **scaled_wd, **kwargs)
        else:
            opt = make(scaled_lr, weight_decay=wd * decay_mults[i], **kwargs)
        for step_grads in grads:
            opt.apply([keras.ops.convert_to_tensor(step_grads[i])], [v])
    return variables


def _clip_by_global_norm(grads, clip):
    norm = np.sqrt(sum(float(np.sum(g.astype("float64") ** 2)) for g in grads))
    return [g * (clip / max(norm, clip)) for g in grads]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_matches_a_copy_per_variable(name):
    make = OPTIMIZERS[name]
    wd = _wd_kwargs(name, WD)
    grads = _gradients(STEPS, SHAPES)
    opt, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads, wd=wd)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads, wd=wd)
    for w, r, m in zip(wrapped, reference, LR_MULTS):
        assert_close(w, r, what=f"{name}: variable {w.path} with multiplier {m}")
    # Global state stays global: one step counter, advanced once per step.
    assert int(to_numpy(opt.iterations)) == STEPS


@pytest.mark.parametrize("name", ["sgd_momentum_nesterov", "adam", "adamw", "nadam", "lion", "rmsprop_centered_momentum"])
@pytest.mark.parametrize(
    "options",
    [
        {"clipnorm": 0.5},
        {"clipvalue": 0.2},
        {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 3},
        {"gradient_accumulation_steps": 2},
    ],
    ids=["clipnorm", "clipvalue", "ema", "accumulation"],
)
def test_per_variable_options_match_a_copy_per_variable(name, options):
    make = OPTIMIZERS[name]
    grads = _gradients(STEPS, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads, **options)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads, **options)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"{name} {options}: {w.path}")


@pytest.mark.parametrize("name", ["sgd_momentum_nesterov", "adam", "adamw", "nadam"])
def test_global_clipnorm_is_taken_over_all_gradients_together(name):
    make = OPTIMIZERS[name]
    grads = _gradients(STEPS, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads, global_clipnorm=0.7)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads, clip_globally=0.7)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"{name} global_clipnorm: {w.path}")


@pytest.mark.parametrize("name", ["sgd_momentum_nesterov", "adamw", "nadam"])
def test_a_schedule_is_scaled_per_variable(name):
    schedule = keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=1, decay_rate=0.5)
    make = OPTIMIZERS[name]
    grads = _gradients(STEPS, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads, lr=schedule)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads, lr=schedule)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"{name} with a schedule: {w.path}")


def test_a_user_subclass_following_update_step_is_scaled():
    class SignSGD(keras.optimizers.Optimizer):
        def update_step(self, gradient, variable, learning_rate):
            lr = keras.ops.cast(learning_rate, variable.dtype)
            self.assign_sub(variable, lr * keras.ops.sign(gradient))

    make = lambda lr, **kw: SignSGD(learning_rate=lr, **kw)
    grads = _gradients(STEPS, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"SignSGD: {w.path}")


def test_many_equal_multipliers_share_one_group_and_still_match():
    """Nadam keeps per-step state of its own; it must advance once per step
    however many distinct multipliers there are."""
    shapes = [(3,)] * 8
    lr_mults = [0.1, 0.2, 0.1, 0.4, 0.2, 1.0, 3.0, 0.4]
    decay_mults = [1.0] * 8
    make = OPTIMIZERS["nadam"]
    grads = _gradients(STEPS, shapes)
    opt, wrapped = run_wrapped(make, lr_mults, decay_mults, grads, shapes=shapes)
    reference = run_reference(make, lr_mults, decay_mults, grads, shapes=shapes)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"nadam: {w.path}")
    plain = keras.optimizers.Nadam(LR)
    plain_vars = _variables(shapes)
    for step in grads:
        plain.apply([keras.ops.convert_to_tensor(g) for g in step], plain_vars)
    assert_close(opt.inner_optimizer._u_product, plain._u_product)
