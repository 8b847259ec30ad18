"""`difflr.schedules.Ramp` and the recipes built on multipliers that follow
the step (issue 26): a head warm-up and a step-level smooth unfreezing.

The references: optax's `linear_schedule` written out in float64, Keras's
own `PolynomialDecay` (a linear ramp from step 0), full-batch SGD by hand in
NumPy, plain Keras SGD per variable with the same schedule, and the
uninterrupted run for a `.keras` round trip in the middle of a ramp.
"""

import os

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, to_numpy
from difflr.schedules import Ramp

schedules = keras.optimizers.schedules


def _linear(t, start, steps, value=1.0, initial=0.0):
    """optax's `linear_schedule(initial, value, steps, transition_begin=start)`
    (with `steps=0`, a jump at `start`), in float64."""
    if steps == 0:
        return value if t >= start else initial
    fraction = min(max((t - start) / steps, 0.0), 1.0)
    return initial + (value - initial) * fraction


def _at(schedule, t):
    return float(to_numpy(keras.ops.cast(schedule(t), "float32")))


@pytest.mark.parametrize("args", [
    dict(start=0, steps=10),                          # a warm-up from step 0
    dict(start=7, steps=5, value=0.1),                # a delayed unfreezing
    dict(start=3, steps=0, value=2.0),                # a jump at step 3
    dict(start=2, steps=4, value=0.25, initial=1.0),  # a ramp down
    dict(start=0, steps=3, value=0.5, initial=0.5),   # flat
])
def test_ramp_is_optax_linear_schedule_with_exact_ends(args):
    ramp = Ramp(**args)
    steps = list(range(20)) + [1000, 2 ** 24]
    expected = [_linear(t, **args) for t in steps]
    np.testing.assert_allclose([_at(ramp, t) for t in steps], expected,
                               rtol=1e-6, atol=0)
    # The plateaus and the ramp's ends are their values exactly (a
    # multiplier of 0 freezes).
    for t in (0, args["start"], args["start"] + args["steps"], 10 ** 6):
        assert _at(ramp, t) == np.float32(_linear(t, **args)), t


def test_ramp_from_zero_is_keras_polynomial_decay_of_power_one():
    ramp = Ramp(start=0, steps=6, value=0.3)
    keras_own = schedules.PolynomialDecay(0.0, 6, end_learning_rate=0.3, power=1.0)
    for t in range(10):
        assert _at(ramp, t) == pytest.approx(_at(keras_own, t), rel=1e-6, abs=1e-9)


def test_ramp_takes_a_vector_of_steps():
    ramp = Ramp(start=2, steps=4, value=0.5)
    values = to_numpy(ramp(keras.ops.convert_to_tensor(np.arange(8, dtype="int32"))))
    np.testing.assert_allclose(values, [_linear(t, 2, 4, 0.5) for t in range(8)],
                               rtol=1e-6)


def test_ramp_saves_by_its_registered_name_and_loads_equal():
    ramp = Ramp(start=5, steps=10, value=0.1, initial=0.01, name="warmup")
    config = schedules.serialize(ramp)
    assert config["registered_name"] == "difflr>Ramp"
    again = schedules.deserialize(config)
    assert type(again) is Ramp and again.get_config() == {
        "start": 5, "steps": 10, "value": 0.1, "initial": 0.01, "name": "warmup"}
    for t in (0, 5, 9, 15, 100):
        assert _at(again, t) == _at(ramp, t)


def test_bad_ramp_arguments_name_the_culprit():
    with pytest.raises(ValueError, match=r"Ramp: `start` must be an integer >= 0; "
                       "received -1"):
        Ramp(start=-1, steps=3)
    with pytest.raises(TypeError, match=r"Ramp: `steps` must be an integer >= 0; "
                       "received 2.5"):
        Ramp(start=0, steps=2.5)
    with pytest.raises(ValueError, match=r"Ramp: `value` must be a finite number "
                       ">= 0; received -0.1"):
        Ramp(0, 3, value=-0.1)
    with pytest.raises(ValueError, match=r"`initial` must be a finite number >= 0; "
                       "received nan"):
        Ramp(0, 3, initial=float("nan"))
    with pytest.raises(TypeError, match="`name` must be a string"):
        Ramp(0, 3, name=3)


# The recipes in fit, against full-batch SGD by hand: three linear layers
# side by side (their gradients are x^T dpred), so every step is exact.

N, D, BATCH, BASE = 32, 3, 8, 0.05
NAMES = ("body0", "body1", "head")


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = (x @ rng.normal(size=(D, 1)) + 0.2).astype("float32")
    return x, y


def _model():
    inputs = keras.Input((D,))
    outputs = [keras.layers.Dense(1, name=name)(inputs) for name in NAMES]
    model = keras.Model(inputs, keras.layers.Add()(outputs))
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5
                       for w in model.get_weights()])
    return model


def _by_hand(model, x, y, rate_of, steps):
    """SGD in float64 from the model's weights: layer `name` steps at
    `BASE * rate_of[name](t)`, batches in order."""
    weights = {name: [w.astype("float64") for w in model.get_layer(name).get_weights()]
               for name in NAMES}
    for t in range(steps):
        k = t % (N // BATCH)
        xb, yb = x[k * BATCH:(k + 1) * BATCH], y[k * BATCH:(k + 1) * BATCH]
        pred = sum(xb @ w + b for w, b in weights.values())
        dpred = 2 * (pred - yb) / pred.size
        for name, (w, b) in weights.items():
            rate = BASE * rate_of[name](t)
            weights[name] = [w - rate * xb.T @ dpred, b - rate * dpred.sum(0)]
    return weights


def _check(model, expected):
    for name in NAMES:
        layer = model.get_layer(name)
        assert_close(layer.kernel, expected[name][0], rtol=1e-5, atol=1e-6, what=name)
        assert_close(layer.bias, expected[name][1], rtol=1e-5, atol=1e-6, what=name)


def test_head_warm_up_trains_the_head_alone_then_brings_the_body_in():
    """The head alone for 4 steps (the body at 0: at step 4 too, the ramp's
    start), then the body ramps to a tenth of the head's rate over 3."""
    x, y = _problem()
    model = _model()
    warm_up = Ramp(start=4, steps=3, value=0.1)
    body = [model.get_layer("body0"), model.get_layer("body1")]
    model.compile(difflr.LRMultiplier(keras.optimizers.SGD(BASE),
                                      [(layer, warm_up) for layer in body]), loss="mse")
    before = [to_numpy(layer.kernel).copy() for layer in body]
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)  # steps 0-3
    for layer, kernel in zip(body, before):
        np.testing.assert_array_equal(to_numpy(layer.kernel), kernel)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)  # steps 4-11
    ramp = lambda t: _linear(t, 4, 3, 0.1)
    expected = _by_hand(_model(), x, y, {"body0": ramp, "body1": ramp,
                                         "head": lambda t: 1.0}, 12)
    _check(model, expected)


def test_smooth_unfreezing_opens_the_groups_top_down_at_their_rates():
    x, y = _problem()
    model = _model()
    # (Side by side, the three layers are one group of `difflr.groups`:
    # they are given as three.)
    rules = _smooth_unfreezing_of([[model.get_layer(n)] for n in NAMES], every=3, span=2)
    model.compile(difflr.LRMultiplier(keras.optimizers.SGD(BASE), rules), loss="mse")
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    expected = _by_hand(_model(), x, y, {
        "body0": lambda t: _linear(t, 6, 2, 0.25),   # 2 ** -2, opens second
        "body1": lambda t: _linear(t, 3, 2, 0.5),    # opens first
        "head": lambda t: 1.0}, 12)
    _check(model, expected)


def _smooth_unfreezing_of(groups, every, span):
    """The recipe of docs/freezing.md: top down, one more group every
    `every` steps, each ramping to its discriminative rate over `span`."""
    rates = difflr.discriminative(groups, factor=2.0)
    rules = {}
    for g, group in enumerate(groups[:-1]):
        for layer in group:
            rules[layer] = Ramp((len(groups) - 1 - g) * every, span, value=rates[layer])
    return rules


def test_a_keras_file_saved_mid_ramp_resumes_bit_for_bit(tmp_path):
    """The step-level schedule depends on `iterations` alone, which the file
    holds: a loaded model goes on as the uninterrupted run, no callback."""
    x, y = _problem()
    rules = lambda model: _smooth_unfreezing_of(
        [[model.get_layer(n)] for n in NAMES], every=3, span=4)
    runs = []
    for interrupted in (False, True):
        model = _model()
        model.compile(difflr.LRMultiplier(keras.optimizers.Adam(BASE), rules(model)),
                      loss="mse")
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        if interrupted:  # at step 4: body1 half-way up its ramp
            path = os.path.join(tmp_path, "mid.keras")
            model.save(path)
            model = keras.models.load_model(path)
            assert isinstance(model.optimizer.schedule_for(
                model.get_layer("body1").kernel), Ramp)
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        runs.append(model)
    for a, b in zip(runs[0].weights, runs[1].weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    for a, b in zip(runs[0].optimizer.variables, runs[1].optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)


def test_a_schedule_at_zero_coasts_with_sgd_momentum_a_constant_zero_does_not():
    """A schedule that reaches 0 is the variable's own copy of the optimizer
    at rate 0: Keras's SGD momentum carries it on, as a plain SGD whose
    schedule reaches 0 does. A constant 0 (`set_multipliers`) is a pause,
    which clears the velocity: the variable stops where it is."""
    stop = Ramp(start=3, steps=0, value=0.0, initial=1.0)   # 1, then 0 from step 3
    rng = np.random.default_rng(2)
    grads = [rng.normal(size=(D, 1)).astype("float32") for _ in range(6)]

    def run(make_optimizer, pause_at=None):
        variable = keras.Variable(np.ones((D, 1), "float32"), name="w")
        opt = make_optimizer()
        for t, g in enumerate(grads):
            if t == pause_at:
                opt.set_multipliers([(variable, 0.0)])
            opt.apply([keras.ops.convert_to_tensor(g)], [variable])
        return to_numpy(variable)

    scheduled = run(lambda: difflr.LRMultiplier(
        keras.optimizers.SGD(BASE, momentum=0.9), {".*": stop}))
    plain = run(lambda: keras.optimizers.SGD(
        schedules.PiecewiseConstantDecay([2], [BASE, 0.0]), momentum=0.9))
    assert_close(scheduled, plain, what="scheduled 0 against plain SGD at rate 0")
    paused = run(lambda: difflr.LRMultiplier(keras.optimizers.SGD(BASE, momentum=0.9)),
                 pause_at=3)
    # Paused at step 3, the variable stays where SGD with momentum left it
    # after 3 steps; the scheduled one coasted on.
    at_three = _sgd_momentum(grads[:3])
    assert_close(paused, at_three, what="paused")
    assert np.abs(scheduled - at_three).min() > 1e-3


def _sgd_momentum(grads, lr=BASE, momentum=0.9):
    """Keras's SGD with momentum, by hand: v <- m v - lr g; w <- w + v."""
    w, v = np.ones((D, 1)), np.zeros((D, 1))
    for g in grads:
        v = momentum * v - lr * g
        w = w + v
    return w
