"""The contract: a variable with multiplier m and decay multiplier d moves
exactly as if it had its own copy of the wrapped optimizer, built with
`learning_rate * m` and `weight_decay * d`; global state stays global.

Each case builds the wrapped optimizer over several variables and, as the
independent reference, one plain optimizer per variable built at the scaled
rate (difflr/_selfcheck.py), feeds both the same random gradients, and
compares every variable.
"""

import pytest
import keras

from conftest import assert_close, to_numpy
from difflr._selfcheck import (DECAY_MULTS, LR, LR_MULTS, OPTIMIZERS, SHAPES, STEPS, WD,
                               gradients, run_reference, run_wrapped, variables, wd_kwargs)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_matches_a_copy_per_variable(name):
    make = OPTIMIZERS[name]
    wd = wd_kwargs(name, WD)
    grads = gradients(STEPS, SHAPES)
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
    grads = gradients(STEPS, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads, **options)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads, **options)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"{name} {options}: {w.path}")


@pytest.mark.parametrize("name", ["sgd_momentum_nesterov", "adam", "adamw", "nadam"])
def test_global_clipnorm_is_taken_over_all_gradients_together(name):
    make = OPTIMIZERS[name]
    grads = gradients(STEPS, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads, global_clipnorm=0.7)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads, clip_globally=0.7)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"{name} global_clipnorm: {w.path}")


@pytest.mark.parametrize("name", ["sgd_momentum_nesterov", "adamw", "nadam"])
def test_a_schedule_is_scaled_per_variable(name):
    schedule = keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=1, decay_rate=0.5)
    make = OPTIMIZERS[name]
    grads = gradients(STEPS, SHAPES)
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
    grads = gradients(STEPS, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"SignSGD: {w.path}")


@pytest.mark.parametrize("base", ["Adam", "SGD"])
def test_a_user_subclass_of_a_keras_optimizer_is_scaled(base):
    """Keras's math without the torch backend's fused update (Keras swaps in
    its torch classes only for its own)."""
    subclass = type(f"My{base}", (getattr(keras.optimizers, base),), {})
    extra = {"momentum": 0.9} if base == "SGD" else {}
    make = lambda lr, **kw: subclass(learning_rate=lr, **extra, **kw)
    grads = gradients(STEPS, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"a subclass of {base}: {w.path}")


def test_many_equal_multipliers_share_one_group_and_still_match():
    """Nadam keeps per-step state of its own; it must advance once per step
    however many distinct multipliers there are."""
    shapes = [(3,)] * 8
    lr_mults = [0.1, 0.2, 0.1, 0.4, 0.2, 1.0, 3.0, 0.4]
    decay_mults = [1.0] * 8
    make = OPTIMIZERS["nadam"]
    grads = gradients(STEPS, shapes)
    opt, wrapped = run_wrapped(make, lr_mults, decay_mults, grads, shapes=shapes)
    reference = run_reference(make, lr_mults, decay_mults, grads, shapes=shapes)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=f"nadam: {w.path}")
    plain = keras.optimizers.Nadam(LR)
    plain_vars = variables(shapes)
    for step in grads:
        plain.apply([keras.ops.convert_to_tensor(g) for g in step], plain_vars)
    assert_close(opt.inner_optimizer._u_product, plain._u_product)
