"""Multiplier 0 is a true freeze."""

import numpy as np
import pytest
import keras

import difflr
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


@pytest.mark.parametrize("name", ["sgd_momentum_nesterov", "adamw", "nadam", "lion", "adagrad", "ftrl", "adafactor"])
def test_setting_zero_later_stops_the_variable_from_the_next_step(name):
    make = OPTIMIZERS[name]
    variables = _variables(SHAPES)
    opt = difflr.LRMultiplier(make(0.01, weight_decay=0.1), [(variables[0], 0.5)])
    grads = _gradients(4, SHAPES)
    _apply(opt, variables, grads[:2])
    opt.set_multipliers([(variables[0], 0.0)])
    frozen_at = to_numpy(variables[0]).copy()
    index = opt._active_index[opt.inner_optimizer._var_key(variables[0])]
    slots_at = [to_numpy(s).copy() for s in opt._slots[index]]
    _apply(opt, variables, grads[2:])
    np.testing.assert_array_equal(to_numpy(variables[0]), frozen_at)
    assert opt.multiplier_for(variables[0]) == 0.0
    # Paused, not updated at rate 0: its optimizer state is untouched too.
    index = opt._active_index[opt.inner_optimizer._var_key(variables[0])]
    for slot, value in zip(opt._slots[index], slots_at):
        np.testing.assert_array_equal(to_numpy(slot), value)


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
    # Reference: a copy of the optimizer over this variable and a stand-in.
    # While frozen, only the stand-in trains: the step counter (and Nadam's
    # per-step state) advance, the variable and its slots stay untouched.
    ref, stand_in = _variables(SHAPES)[0], keras.Variable(np.zeros(3, "float32"))
    copy = make(0.02, weight_decay=0.1)
    copy.build([ref, stand_in])
    for step in grads[:2]:
        copy.apply([keras.ops.ones((3,))], [stand_in])
    for step in grads[2:]:
        copy.apply([keras.ops.convert_to_tensor(step[0])], [ref])
    assert_close(variables[0], ref)
