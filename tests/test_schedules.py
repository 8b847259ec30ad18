"""difflr.schedules: exact values, ratios kept through LRMultiplier, saving."""

import math
import os

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, to_numpy
from difflr.schedules import OneCycle, SlantedTriangular


# Independent references, written from fastai's code and the ULMFiT paper.

def _fastai_one_cycle(t, total, max_lr, pct_start=0.25, div=25.0, div_final=1e5):
    """fastai: ParamScheduler at pct_train = t / (n_epoch * n_iter) through
    combine_scheds([pct, 1 - pct], [SchedCos(lo, max), SchedCos(max, end)])."""
    pos = t / total
    if pos >= 1:  # fastai never gets here; difflr holds the final value
        return max_lr / div_final
    edges = [0.0, pct_start, 1.0]
    phase = min(max(i for i in range(3) if pos >= edges[i]), 1)
    x = (pos - edges[phase]) / (edges[phase + 1] - edges[phase])
    start, end = [(max_lr / div, max_lr), (max_lr, max_lr / div_final)][phase]
    return start + (1 + math.cos(math.pi * (1 - x))) * (end - start) / 2


def _ulmfit_stlr(t, total, max_lr, cut_frac=0.1, ratio=32.0):
    """ULMFiT eq. 3, with p held at 0 once the decay line reaches it."""
    cut = math.floor(total * cut_frac)
    if t < cut:
        p = t / cut
    else:
        p = 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    p = max(p, 0.0)
    return max_lr * (1 + p * (ratio - 1)) / ratio


def _values(schedule, steps):
    return np.array([float(to_numpy(schedule(t))) for t in steps])


def test_one_cycle_matches_fastai_step_by_step():
    total, max_lr = 37, 0.02
    steps = list(range(total + 5)) + [10 * total]
    for kwargs in [
        {},
        {"pct_start": 0.3, "div": 5.0},       # fine_tune's second phase
        {"pct_start": 0.99},                  # fine_tune's first phase
        {"pct_start": 0.0, "div_final": 10.0},
    ]:
        schedule = OneCycle(max_lr, total, **kwargs)
        expected = [_fastai_one_cycle(t, total, max_lr, **kwargs) for t in steps]
        np.testing.assert_allclose(_values(schedule, steps), expected, rtol=2e-5,
                                   err_msg=str(kwargs))


def test_one_cycle_landmarks():
    schedule = OneCycle(0.1, total_steps=100)
    values = _values(schedule, [0, 25, 99, 100, 1000])
    np.testing.assert_allclose(values[:2], [0.1 / 25, 0.1], rtol=1e-6)
    # fastai's last step runs at pos = 99/100: just above the final rate.
    assert values[2] > 0.1 / 1e5
    np.testing.assert_allclose(values[3:], [0.1 / 1e5] * 2, rtol=1e-6)
    assert np.all(np.diff(_values(schedule, range(26))) > 0)
    assert np.all(np.diff(_values(schedule, range(25, 101))) < 0)


def test_slanted_triangular_matches_ulmfit_eq3():
    max_lr = 0.01
    for total, kwargs in [
        (100, {}),
        (105, {}),  # T * cut_frac not an integer: the clip at p = 0 matters
        (40, {"cut_frac": 0.25, "ratio": 8.0}),
        (10, {"cut_frac": 0.5, "ratio": 1.0}),  # ratio 1: a constant rate
    ]:
        schedule = SlantedTriangular(max_lr, total, **kwargs)
        steps = list(range(total + 5)) + [10 * total]
        expected = [_ulmfit_stlr(t, total, max_lr, **kwargs) for t in steps]
        np.testing.assert_allclose(_values(schedule, steps), expected, rtol=2e-5,
                                   err_msg=f"{total} {kwargs}")


def test_slanted_triangular_landmarks_and_floor():
    ratio = 32.0
    schedule = SlantedTriangular(0.01, total_steps=105)
    values = _values(schedule, range(0, 200))
    cut = 10  # floor(105 * 0.1)
    assert values.argmax() == cut
    np.testing.assert_allclose(values[[0, cut]], [0.01 / ratio, 0.01], rtol=1e-6)
    # The paper's line would reach zero p at t = 100 and go below 0.01/32.
    assert values.min() == pytest.approx(0.01 / ratio, rel=1e-6)
    np.testing.assert_allclose(values[100:], 0.01 / ratio, rtol=1e-6)


def _linear_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5)).astype("float32")
    y = rng.normal(size=(48, 3)).astype("float32")
    inputs = keras.Input((5,))
    dense = keras.layers.Dense(3, name="linear")
    return x, y, keras.Model(inputs, dense(inputs)), dense


@pytest.mark.parametrize("make, reference", [
    (lambda: OneCycle(0.3, total_steps=6, pct_start=0.5),
     lambda t: _fastai_one_cycle(t, 6, 0.3, pct_start=0.5)),
    (lambda: SlantedTriangular(0.3, total_steps=10, cut_frac=0.2, ratio=4.0),
     lambda t: _ulmfit_stlr(t, 10, 0.3, cut_frac=0.2, ratio=4.0)),
])
def test_each_variable_trains_at_schedule_times_its_multiplier(make, reference):
    x, y, model, dense = _linear_problem()
    w, b = to_numpy(dense.kernel).astype("float64"), to_numpy(dense.bias).astype("float64")
    mults = (0.3, 2.0)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(make()),
                              [(dense.kernel, mults[0]), (dense.bias, mults[1])])
    model.compile(optimizer=opt, loss="mse")
    # 6 steps an epoch, 12 in all: past the end of the 6-step one-cycle.
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for t in range(12):
        xb, yb = x[8 * (t % 6):8 * (t % 6) + 8], y[8 * (t % 6):8 * (t % 6) + 8]
        dpred = 2 * (xb @ w + b - yb) / yb.size
        lr = reference(t)
        w, b = w - lr * mults[0] * (xb.T @ dpred), b - lr * mults[1] * dpred.sum(0)
    assert_close(dense.kernel, w, rtol=1e-4, atol=1e-6)
    assert_close(dense.bias, b, rtol=1e-4, atol=1e-6)
    assert float(to_numpy(opt.learning_rate)) == pytest.approx(reference(12), rel=1e-5)


def test_config_round_trip():
    for schedule in [
        OneCycle(0.01, 50, pct_start=0.3, div=5.0, div_final=1e4, name="oc"),
        SlantedTriangular(0.01, 50, cut_frac=0.2, ratio=16.0, name="stlr"),
    ]:
        config = schedule.get_config()
        clone = type(schedule).from_config(config)
        assert clone.get_config() == config
        serialized = keras.optimizers.schedules.serialize(schedule)
        assert serialized["registered_name"] == f"difflr>{type(schedule).__name__}"
        restored = keras.optimizers.schedules.deserialize(serialized)
        assert type(restored) is type(schedule)
        assert restored.get_config() == config
        steps = range(0, 60, 7)
        np.testing.assert_array_equal(_values(restored, steps),
                                      _values(schedule, steps))


def test_saved_model_keeps_the_schedule_and_continues_exactly(tmp_path):
    x, y, model, dense = _linear_problem()
    opt = difflr.LRMultiplier(
        keras.optimizers.Adam(OneCycle(0.05, total_steps=12, pct_start=0.3)),
        [(dense.kernel, 0.5)])
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    loaded = keras.models.load_model(path)  # no custom_objects
    saved = loaded.optimizer.inner_optimizer.get_config()["learning_rate"]
    assert saved["registered_name"] == "difflr>OneCycle"
    assert saved["config"]["total_steps"] == 12
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(loaded.weights, model.weights):
        assert_close(a, b, rtol=1e-6, atol=1e-7, what=b.path)


def test_bad_arguments_raise_clear_errors():
    cases = [
        (lambda: OneCycle(0.0, 10), ValueError, r"OneCycle: `max_lr` must be a finite number > 0; received 0.0"),
        (lambda: OneCycle("0.1", 10), TypeError, r"`max_lr` must be a number; received '0.1'"),
        (lambda: OneCycle(0.1, 0), ValueError, r"`total_steps` must be an integer >= 1; received 0"),
        (lambda: OneCycle(0.1, 10.5), TypeError, r"`total_steps` must be an integer"),
        (lambda: OneCycle(0.1, True), TypeError, r"`total_steps` must be an integer"),
        (lambda: OneCycle(0.1, 10, pct_start=1.0), ValueError, r"`pct_start` must be a finite number >= 0 and < 1"),
        (lambda: OneCycle(0.1, 10, div=-2), ValueError, r"`div` must be a finite number > 0"),
        (lambda: OneCycle(0.1, 10, div_final=float("nan")), ValueError, r"`div_final`"),
        (lambda: SlantedTriangular(0.1, 100, cut_frac=0.0), ValueError, r"`cut_frac` must be a finite number > 0 and < 1"),
        (lambda: SlantedTriangular(0.1, 100, cut_frac=1.0), ValueError, r"`cut_frac`"),
        (lambda: SlantedTriangular(0.1, 100, ratio=0.5), ValueError, r"`ratio` must be a finite number >= 1"),
        (lambda: SlantedTriangular(-1, 100), ValueError, r"SlantedTriangular: `max_lr`"),
        (lambda: SlantedTriangular(0.1, 5), ValueError, r"total_steps \* cut_frac` must be at least 1.*cut_frac >= 0.2"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match):
            make()
