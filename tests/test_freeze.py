"""Multiplier 0 is a true freeze."""

import numpy as np
import pytest
import keras

import difflr
from difflr import _keras_compat
from conftest import assert_close, to_numpy
from difflr._selfcheck import OPTIMIZERS, gradients as _gradients, variables as _variables

SHAPES = [(3, 4), (4,), (2, 3)]


def _apply(opt, variables, grads):
    for step in grads:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step], variables)


@pytest.mark.parametrize("name", ["sgd_momentum_nesterov", "adamw", "nadam", "ftrl", "lamb"])
def test_frozen_at_build_never_moves_and_has_no_optimizer_state(name):
    make = OPTIMIZERS[name]
    variables = _variables(SHAPES)
    start = [to_numpy(v).copy() for v in variables]
    opt = difflr.LRMultiplier(make(0.01, weight_decay=0.1), [(variables[0], 0.0)])
    _apply(opt, variables, _gradients(3, SHAPES))
    np.testing.assert_array_equal(to_numpy(variables[0]), start[0])
    assert not np.allclose(to_numpy(variables[1]), start[1])
    # The frozen variable holds no optimizer slots: the same optimizer built
    # on the other two variables alone has exactly as many variables.
    alone = make(0.01, weight_decay=0.1)
    alone.build(_variables(SHAPES)[1:])
    assert len(opt.inner_optimizer.variables) == len(alone.variables)
    frozen_elements = int(np.prod(SHAPES[0]))
    held = sum(int(np.prod(v.shape)) for v in opt.inner_optimizer.variables)
    held_alone = sum(int(np.prod(v.shape)) for v in alone.variables)
    assert held == held_alone, f"frozen variable costs {held - held_alone} of {frozen_elements}"


# Where a rate of 0 is not known to be harmless (Ftrl divides by it; the
# others are not checked), a paused variable's optimizer state is held.
HELD_STATE = {"ftrl", "lamb", "adafactor", "muon", "schedule_free_adamw"}


class _SubclassedAdam(keras.optimizers.Adam):
    pass


class _SubclassedSGD(keras.optimizers.SGD):
    pass


# A subclass keeps Keras's math, but not the torch backend's fused update
# (Keras swaps in its torch classes only for its own): the per-variable path.
SUBCLASSED = {
    "subclassed_adam": lambda lr, **kw: _SubclassedAdam(lr, **kw),
    "subclassed_sgd_momentum": lambda lr, **kw: _SubclassedSGD(lr, momentum=0.9, **kw),
}


# The slot lists that hold a velocity (the rate times averaged gradients).
VELOCITY = {"sgd_momentum": "momentums", "sgd_momentum_nesterov": "momentums",
            "subclassed_sgd_momentum": "momentums",
            "rmsprop_centered_momentum": "_momentums"}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS) + sorted(SUBCLASSED))
def test_setting_zero_later_stops_the_variable_from_the_next_step(name):
    make = OPTIMIZERS.get(name) or SUBCLASSED[name]
    variables = _variables(SHAPES)
    opt = difflr.LRMultiplier(make(0.01, weight_decay=0.1), [(variables[0], 0.5)])
    grads = _gradients(4, SHAPES)
    _apply(opt, variables, grads[:2])
    opt.set_multipliers([(variables[0], 0.0)])
    frozen_at = to_numpy(variables[0]).copy()
    slots = opt._layout.slots[opt._layout.index_of(variables[0])]
    slots_at = [to_numpy(s).copy() for s in slots]
    _apply(opt, variables, grads[2:])
    np.testing.assert_array_equal(to_numpy(variables[0]), frozen_at)
    assert opt.multiplier_for(variables[0]) == 0.0
    if name in HELD_STATE:
        for slot, value in zip(slots, slots_at):
            np.testing.assert_array_equal(to_numpy(slot), value)
        return
    # Otherwise the state moves as the variable's own copy of the optimizer
    # would at rate 0 (Adam's moments keep tracking the gradients), but a
    # velocity (SGD's and RMSprop's momentum, which holds the rate) is
    # cleared as the pause begins, and stays 0: the variable stays put.
    ref = _variables(SHAPES)[0]
    copy = make(0.005, weight_decay=0.1)
    copy.build([ref])
    for step in grads:
        if step is grads[2]:
            copy.learning_rate = 0.0
            for velocity in getattr(copy, VELOCITY.get(name, ""), []):
                velocity.assign(keras.ops.zeros(velocity.shape, velocity.dtype))
        copy.apply([keras.ops.convert_to_tensor(step[0])], [ref])
    ref_slots = _keras_compat.per_variable_slots(copy, [ref])[0]
    assert len(slots) == len(ref_slots)  # plain SGD has none
    for slot, expected in zip(slots, ref_slots):
        assert_close(slot, expected, what=slot.path)


@pytest.mark.parametrize("name", ["sgd_momentum", "rmsprop_centered_momentum"])
def test_a_paused_velocity_restored_from_weights_is_cleared(name):
    """A state saved with a paused variable's velocity non-zero (earlier
    versions let it decay) would make it coast: loading clears it."""
    make = OPTIMIZERS[name]
    variables = _variables(SHAPES)
    opt = difflr.LRMultiplier(make(0.01), [(variables[0], 0.0)], keep_frozen_state=True)
    grads = _gradients(2, SHAPES)
    _apply(opt, variables, grads[:1])
    velocity = getattr(opt.inner_optimizer, VELOCITY[name])[0]
    store = {}
    opt.save_own_variables(store)
    for i, v in enumerate(opt.variables):
        if v is velocity:
            store[str(i)] = np.ones(v.shape, "float32")
    opt.load_own_variables(store)
    np.testing.assert_array_equal(to_numpy(velocity), np.zeros(SHAPES[0]))
    start = to_numpy(variables[0]).copy()
    _apply(opt, variables, grads[1:])
    np.testing.assert_array_equal(to_numpy(variables[0]), start)


def test_unfreezing_a_variable_without_state_raises_and_says_how():
    variables = _variables(SHAPES)
    opt = difflr.LRMultiplier("adam", [(variables[0], 0.0)])
    _apply(opt, variables, _gradients(1, SHAPES))
    with pytest.raises(ValueError, match="keep_frozen_state=True"):
        opt.set_multipliers([(variables[0], 1.0)])
    # The failed call changed nothing.
    assert opt.multiplier_for(variables[0]) == 0.0


@pytest.mark.parametrize("name", ["adamw", "nadam"])
def test_keep_frozen_state_allows_unfreezing_inside_training(name):
    make = OPTIMIZERS[name]
    variables = _variables(SHAPES)
    opt = difflr.LRMultiplier(make(0.01, weight_decay=0.1), [(variables[0], 0.0)],
                              keep_frozen_state=True)
    grads = _gradients(4, SHAPES)
    _apply(opt, variables, grads[:2])
    np.testing.assert_array_equal(to_numpy(variables[0]), to_numpy(_variables(SHAPES)[0]))
    opt.set_multipliers([(variables[0], 2.0)])
    _apply(opt, variables, grads[2:])
    # Reference: the variable's own copy of the optimizer, at rate 0 while
    # frozen (the variable stays put, its state follows the gradients), then
    # at 0.01 x 2.
    ref = _variables(SHAPES)[0]
    copy = make(0.0, weight_decay=0.1)
    for step in grads:
        if step is grads[2]:
            copy.learning_rate = 0.02
        copy.apply([keras.ops.convert_to_tensor(step[0])], [ref])
    assert_close(variables[0], ref)
