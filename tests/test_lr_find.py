"""lr_find: the range test sweeps the base rate with every multiplier held,
restores everything bit for bit, and suggests as fastai does."""

import math

import keras
import matplotlib
import numpy as np
import pytest
from keras import layers

import difflr
from difflr.lr_finder import suggest
from conftest import assert_close, backend, to_numpy

matplotlib.use("Agg")


def _state(model):
    """Exact copies of every model and optimizer variable, by path."""
    variables = list(model.variables) + list(model.optimizer.variables)
    return [(v.path, np.array(to_numpy(v))) for v in variables]


def _assert_same_state(before, after):
    assert [p for p, _ in before] == [p for p, _ in after]
    for (path, a), (_, b) in zip(before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), path


def _classifier(seed=0):
    """Dense + BatchNorm + Dropout (a seed state), with a frozen layer.

    (An unseeded Dropout draws from the backend's global generator on torch,
    which any fit advances: not model state.)"""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    frozen = layers.Dense(8, name="frozen")
    body = layers.Dense(8, activation="relu", name="body")
    x = layers.BatchNormalization(name="bn")(body(frozen(inputs)))
    x = layers.Dropout(0.2, seed=7)(x)  # seeded: its state is a variable
    model = keras.Model(inputs, layers.Dense(3, name="head")(x))
    return model, frozen, body


def _classification_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = np.eye(3, dtype="float32")[x[:, :3].argmax(axis=1)]
    return x, y


@pytest.mark.parametrize("rate", ["float", "schedule"])
@pytest.mark.parametrize("stop", ["early", "complete"])
def test_everything_is_restored_bit_for_bit(rate, stop):
    model, frozen, body = _classifier()
    lr = 1e-3 if rate == "float" else keras.optimizers.schedules.ExponentialDecay(
        1e-3, decay_steps=3, decay_rate=0.5)
    opt = difflr.LRMultiplier(keras.optimizers.Adam(lr), {frozen: 0.0, body: 0.3})
    model.compile(opt, loss="mse", metrics=["accuracy"])
    x, y = _classification_data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # non-trivial state
    history = model.history
    before = _state(model)
    lr_before = np.array(to_numpy(opt.learning_rate))
    if stop == "early":
        result = difflr.lr_find(model, x, y, batch_size=16, start_lr=1e-3,
                                end_lr=1e6, num_steps=60, verbose=0)
        assert result.stopped_early and len(result.learning_rates) < 60
    else:
        result = difflr.lr_find(model, x, y, batch_size=16, start_lr=1e-5,
                                end_lr=1e-2, num_steps=12, stop_div=False, verbose=0)
        assert not result.stopped_early and len(result.learning_rates) == 12
    _assert_same_state(before, _state(model))
    assert np.array_equal(to_numpy(opt.learning_rate), lr_before)
    assert model.history is history and not model.stop_training
    if rate == "schedule":
        schedule = opt.inner_optimizer.get_config()["learning_rate"]
        assert schedule == keras.optimizers.schedules.serialize(lr)
    # And training goes on from there as it would have.
    twin, _, _ = _classifier()
    twin.compile(difflr.LRMultiplier(keras.optimizers.Adam(lr), {
        twin.get_layer("frozen"): 0.0, twin.get_layer("body"): 0.3}),
        loss="mse", metrics=["accuracy"])
    twin.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for (path, a), (_, b) in zip(before, _state(twin)):
        assert np.array_equal(a, b), f"the twin differs at {path}"
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    twin.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for (path, a), (_, b) in zip(_state(model), _state(twin)):
        assert np.array_equal(a, b), f"training after lr_find differs at {path}"


def test_restored_under_a_loss_scale_optimizer():
    keras.config.set_dtype_policy("mixed_float16")
    model, frozen, body = _classifier()
    model.compile(difflr.LRMultiplier(keras.optimizers.Adam(1e-3), {frozen: 0.0}),
                  loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = _classification_data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    before = _state(model)
    result = difflr.lr_find(model, x, y, batch_size=16, start_lr=1e-4, end_lr=1e4,
                            num_steps=40, verbose=0)
    assert len(result.learning_rates) >= 2
    _assert_same_state(before, _state(model))


def test_an_optimizer_not_built_yet_is_built_as_fit_would():
    model, _, _ = _classifier()
    model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.01)),
                  loss="mse")
    assert not model.optimizer.built
    x, y = _classification_data()
    before = [np.array(to_numpy(v)) for v in model.variables]
    difflr.lr_find(model, x, y, batch_size=16, num_steps=8, verbose=0)
    assert model.optimizer.built and int(to_numpy(model.optimizer.iterations)) == 0
    for v, b in zip(model.variables, before):
        assert np.array_equal(to_numpy(v), b), v.path


class _Recorder(keras.callbacks.Callback):
    """Records the base rate in force and the variables around each step."""

    def __init__(self, variables):
        super().__init__()
        self.variables = variables
        self.rates, self.before, self.after = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer  # on JAX this syncs the training state
        self.rates.append(float(to_numpy(opt.learning_rate)))
        self.before.append([to_numpy(v).copy() for v in self.variables])

    def on_train_batch_end(self, batch, logs=None):
        _ = self.model.optimizer
        self.after.append([to_numpy(v).copy() for v in self.variables])


def _linear_problem(n=32, d=3, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * np.array([1.0, 2.0, 0.5])[:d]).astype("float32")
    y = (x @ rng.normal(size=(d, 1)) + 0.3 + noise * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def _linear_model():
    inputs = keras.Input((3,))
    fit = layers.Dense(1, name="fit")
    frozen = layers.Dense(1, name="frozen")
    return keras.Model(inputs, layers.Add()([fit(inputs), frozen(inputs)])), fit, frozen


@pytest.mark.parametrize("rate", ["float", "schedule"])
def test_the_rates_are_exponential_and_every_multiplier_is_held(rate):
    x, y = _linear_problem()
    model, fit, frozen = _linear_model()
    lr = 0.01 if rate == "float" else keras.optimizers.schedules.PiecewiseConstantDecay(
        [5], [0.01, 0.001])
    opt = difflr.LRMultiplier(keras.optimizers.SGD(lr),
                              [(fit.kernel, 0.5), (fit.bias, 2.0), (frozen, 0.0)])
    model.compile(opt, loss="mse")
    start, end, n = 1e-4, 1e-1, 6
    recorder = _Recorder([fit.kernel, fit.bias, frozen.kernel, frozen.bias])
    result = difflr.lr_find(model, x, y, batch_size=len(x), shuffle=False,
                            start_lr=start, end_lr=end, num_steps=n, stop_div=False,
                            verbose=0, callbacks=[recorder])
    expected = [start * (end / start) ** (i / (n - 1)) for i in range(n)]
    assert result.learning_rates == pytest.approx(expected, rel=1e-14, abs=0)
    assert result.learning_rates[0] == start and result.learning_rates[-1] == end
    # The rate in force at each step (float32 in the optimizer).
    assert recorder.rates == pytest.approx(expected, rel=2e-6)
    assert len(result.raw_losses) == len(result.losses) == n

    # Each step moved each variable as plain SGD at multiplier * rate.
    for i in range(3):
        w, b, fw, fb = (a.astype("float64") for a in recorder.before[i])
        pred = x @ (w + fw) + b + fb
        dpred = 2 * (pred - y) / pred.size
        grad_w, grad_b = x.T @ dpred, dpred.sum(0)
        lr_i = expected[i]
        after = recorder.after[i]
        assert_close(after[0], w - 0.5 * lr_i * grad_w, rtol=1e-5, atol=1e-7,
                     what=f"kernel at step {i}")
        assert_close(after[1], b - 2.0 * lr_i * grad_b, rtol=1e-5, atol=1e-7,
                     what=f"bias at step {i}")
        assert np.array_equal(after[2], recorder.before[0][2])   # frozen
        assert np.array_equal(after[3], recorder.before[0][3])
        # The raw loss is that step's batch loss, before its update.
        assert result.raw_losses[i] == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-5)
    # The smoothing is fastai's debiased moving average.
    avg = 0.0
    for i, loss in enumerate(result.raw_losses):
        avg = 0.98 * avg + 0.02 * loss
        assert result.losses[i] == pytest.approx(avg / (1 - 0.98 ** (i + 1)), rel=1e-12)


def test_a_quadratic_against_a_float64_reference_and_the_theory():
    """Full-batch SGD on least squares: the sweep is a known dynamical system.

    It diverges above lr = 2 / lambda_max of the Hessian preconditioned by the
    multipliers (M^1/2 H M^1/2). The sweep reproduces a float64 simulation of
    itself until then, and stops after that rate, not before. fastai's
    smoothed 4x rule fires an order of magnitude later (the steepest
    direction has converged by then, and must grow back from rounding), which
    is what its `minimum` rule (a tenth of the rate at the minimum) corrects.
    """
    rng = np.random.default_rng(0)
    n = 64
    x = (rng.normal(size=(n, 3)) * np.array([1.0, 2.0, 0.5])).astype("float32")
    y = (x @ rng.normal(size=(3, 1)) + 0.3 + 0.3 * rng.normal(size=(n, 1))).astype("float32")
    inputs = keras.Input((3,))
    dense = layers.Dense(1, name="fit", kernel_initializer="zeros")
    model = keras.Model(inputs, dense(inputs))
    model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.01), [(dense.bias, 0.25)]),
                  loss="mse")
    mults = np.array([1.0, 1.0, 1.0, 0.25])    # the kernel's three entries, the bias
    z = np.concatenate([x, np.ones((n, 1))], axis=1).astype("float64")
    hessian = 2 * z.T @ z / n
    root = np.diag(np.sqrt(mults))
    lr_diverge = 2 / np.linalg.eigvalsh(root @ hessian @ root).max()
    steps, start, end = 100, lr_diverge * 1e-4, lr_diverge * 1e2
    result = difflr.lr_find(model, x, y, batch_size=n, shuffle=False, start_lr=start,
                            end_lr=end, num_steps=steps, verbose=0)

    # The same sweep in float64.
    theta, average, best, reference = np.zeros((4, 1)), 0.0, math.inf, []
    for i in range(steps):
        residual = z @ theta - y
        reference.append(float(np.mean(residual ** 2)))
        average = 0.98 * average + 0.02 * reference[-1]
        smoothed = average / (1 - 0.98 ** (i + 1))
        best = min(best, smoothed)
        theta = theta - start * (end / start) ** (i / (steps - 1)) * mults[:, None] * (
            2 * z.T @ residual / n)
        if smoothed > 4 * best:
            break
    below = [i for i, lr in enumerate(result.learning_rates) if lr < lr_diverge]
    assert len(below) > 50
    assert_close(result.raw_losses[:len(below)], reference[:len(below)], rtol=1e-4, atol=0)

    assert result.stopped_early
    stop = result.learning_rates[-1]
    assert stop > lr_diverge
    assert abs(len(result.learning_rates) - len(reference)) <= 3   # float32 rounding
    lr_at_minimum = result.suggestion_points["minimum"][0]
    assert result.suggestions["minimum"] < lr_diverge < lr_at_minimum < stop < 20 * lr_diverge
    assert result.suggestions["valley"] < lr_diverge
    assert result.suggestions["steep"] < lr_diverge


# fastai's rules (fastai/callback/schedule.py), transcribed on their own, and
# fastai's windowing in Learner.lr_find, for the check.


def _fastai_valley(lrs, losses):
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


def _fastai_steep(lrs, losses):
    grads = (losses[1:] - losses[:-1]) / (np.log(lrs[1:]) - np.log(lrs[:-1]))
    return float(lrs[grads.argmin()])


def _fastai_minimum(lrs, losses):
    return float(lrs[losses.argmin()]) / 10


def _fastai_window(lrs, losses, num_it):
    lrs, losses = np.array(lrs[num_it // 10:-5]), np.array(losses[num_it // 10:-5])
    nan = np.flatnonzero(np.isnan(losses))
    if len(nan):
        lrs, losses = lrs[:nan[0]], losses[:nan[0]]
    return lrs, losses


@pytest.mark.parametrize("seed", range(4))
def test_the_suggestions_are_fastai_rules(seed):
    rng = np.random.default_rng(seed)
    n = 100
    lrs = 1e-7 * (10 / 1e-7) ** (np.arange(n) / (n - 1))
    t = np.log10(lrs)
    # Flat, a valley down to a minimum near 1e-2, then a blow-up; noisy.
    losses = 2.0 - 1.5 / (1 + np.exp(-(t + 4) * 1.5)) + np.exp(2.5 * (t + 1.5))
    losses = losses + 0.02 * rng.normal(size=n)
    losses = list(losses)
    if seed == 3:
        losses[80:] = [math.nan] * 20
    suggestions, points = suggest(list(lrs), losses, n)
    wl, wv = _fastai_window(lrs, losses, n)
    assert suggestions["valley"] == _fastai_valley(wl, wv)
    assert suggestions["steep"] == _fastai_steep(wl, wv)
    assert suggestions["minimum"] == _fastai_minimum(wl, wv)
    assert points["minimum"][0] == suggestions["minimum"] * 10
    assert 1e-5 < suggestions["valley"] < 1e-2   # on the way down
    # Too few steps to judge: None.
    assert suggest([1e-3] * 6, [1.0] * 6, 6) == ({"valley": None, "steep": None,
                                                   "minimum": None}, {})


def test_result_repr_and_plot():
    x, y = _linear_problem()
    model, _, _ = _linear_model()
    model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.01)), loss="mse")
    result = difflr.lr_find(model, x, y, batch_size=8, num_steps=30, verbose=0)
    assert repr(result).startswith("LRFindResult(") and "valley=" in repr(result)
    ax = result.plot()
    assert ax.get_xscale() == "log"
    # Each marker stands at the rate of `suggestions` its legend gives, on the
    # smoothed curve (interpolated in log(lr) between recorded steps).
    lrs, losses = np.log(result.learning_rates), np.asarray(result.losses)
    markers = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0])
               for line in ax.get_lines()[1:]}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(markers)
    assert markers == {
        f"{name}: {rate:.2e}": (rate, pytest.approx(np.interp(np.log(rate), lrs, losses),
                                                    rel=1e-12))
        for name, rate in result.suggestions.items()}
    import matplotlib.pyplot as plt
    plt.close("all")


@pytest.mark.filterwarnings("ignore:.*(shuffle|ran out of data).*:UserWarning")
def test_data_shorter_than_the_sweep_is_read_again_and_a_generator_must_suffice():
    x, y = _linear_problem(n=16)
    model, _, _ = _linear_model()
    model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.01)), loss="mse")
    result = difflr.lr_find(model, x, y, batch_size=8, start_lr=1e-6, end_lr=1e-3,
                            num_steps=10, verbose=0)   # 2 batches, 10 steps
    assert len(result.learning_rates) == 10
    before = _state(model)

    def three_batches():
        for i in range(3):
            yield x[:8], y[:8]

    with pytest.raises(ValueError, match=r"data ran out after 3 of 10 steps"):
        difflr.lr_find(model, three_batches(), start_lr=1e-6, end_lr=1e-3,
                       num_steps=10, verbose=0)
    _assert_same_state(before, _state(model))


def test_bad_input_is_a_clear_error():
    x, y = _linear_problem()
    model, _, _ = _linear_model()
    with pytest.raises(ValueError, match=r"model '.*' is not compiled"):
        difflr.lr_find(model, x, y)
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    with pytest.raises(TypeError, match=r"compiled with a difflr.LRMultiplier.*its "
                                        r"optimizer is SGD"):
        difflr.lr_find(model, x, y)
    model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.01)), loss="mse")
    cases = [
        ({"start_lr": 1.0, "end_lr": 0.1}, ValueError, r"`start_lr` must be below `end_lr`"),
        ({"start_lr": 0.1, "end_lr": 0.1}, ValueError, r"`start_lr` must be below `end_lr`"),
        ({"start_lr": 0.0}, ValueError, r"`start_lr` must be a finite number > 0"),
        ({"end_lr": -1.0}, ValueError, r"`end_lr` must be a finite number > 0"),
        ({"end_lr": math.inf}, ValueError, r"`end_lr` must be a finite number"),
        ({"num_steps": 1}, ValueError, r"`num_steps` must be an integer >= 2"),
        ({"num_steps": 10.0}, TypeError, r"`num_steps` must be an integer"),
        ({"beta": 1.0}, ValueError, r"`beta` must be a finite number >= 0 and < 1"),
        ({"stop_div": "yes"}, TypeError, r"`stop_div` must be True or False"),
        ({"epochs": 3}, ValueError, r"sets `epochs` itself"),
        ({"validation_split": 0.2}, ValueError, r"sets `validation_split` itself"),
        ({"callbacks": keras.callbacks.History()}, TypeError, r"`callbacks` must be a list"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            difflr.lr_find(model, x, y, **kwargs)
    with pytest.raises(ValueError, match="`x` is None"):
        difflr.lr_find(model, None)
    with pytest.raises(TypeError, match="`model` must be a compiled Keras model"):
        difflr.lr_find("model", x, y)
    model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.01)), loss="mse",
                  steps_per_execution=2)
    with pytest.raises(ValueError, match=r"runs 2 steps per execution"):
        difflr.lr_find(model, x, y)


# Reporting, hand-computed (issue 22, item 9).

_NONE = {"valley": None, "steep": None, "minimum": None}


@pytest.mark.parametrize("recorded", range(9))
@pytest.mark.parametrize("num_steps", [4, 10, 20])
def test_suggest_judges_the_window_the_docs_give_or_none(recorded, num_steps):
    """The window is steps `num_steps // 10` to the sixth from last: none is
    left with 5 steps or fewer (the end used to count from the back below
    5: with 4 steps it judged steps 0..2, or 1..2)."""
    lrs = [10.0 ** (k - 8) for k in range(recorded)]
    losses = [3.0, 1.0, 2.0, 0.5, 4.0, 0.25, 5.0, 0.1][:recorded]
    suggestions, points = suggest(lrs, losses, num_steps)
    first, end = num_steps // 10, recorded - 5    # the window, by hand
    if end - first < 2:
        assert (suggestions, points) == (_NONE, {})
        return
    # 7 or 8 steps, skip 0 or 1: a window of 2 or 3 points, by hand.
    window = list(range(first, end))
    assert (recorded, first, window) in [(7, 0, [0, 1]), (8, 0, [0, 1, 2]),
                                         (8, 1, [1, 2])]
    lowest = min(window, key=lambda k: losses[k])
    # The longest way down is 2 points from the window's start: index 0.
    assert suggestions == {"valley": lrs[first], "steep": lrs[first],
                           "minimum": lrs[lowest] / 10}
    assert points["minimum"] == (lrs[lowest], losses[lowest])


def _curve(window_losses, before=(0.05, 0.05), after=(3.0, 0.01, 5.0, 0.02, 9.0)):
    """A sweep of 20 asked steps (2 skipped) with the given window; the
    points outside it would change every answer if judged."""
    losses = list(before) + list(window_losses) + list(after)
    return [10.0 ** (k / 2 - 6) for k in range(len(losses))], losses


def test_suggest_on_a_valley_by_hand():
    window = [1.3, 1.2, 1.15, 1.1, 0.6, 0.5, 0.45, 0.6, 2.0]
    lrs, losses = _curve(window)
    suggestions, points = suggest(lrs, losses, 20)
    # valley: all of 0..6 goes down (L = 7, end = 6): 6 - 7 + 2 + 1 = 2.
    # steep: equal log steps, so the largest fall: 1.1 -> 0.6, at 3.
    # minimum: 0.45 at 6, and a tenth of its rate.
    assert suggestions == {"valley": lrs[2 + 2], "steep": lrs[2 + 3],
                           "minimum": lrs[2 + 6] / 10}
    assert points == {"valley": (lrs[4], 1.15), "steep": (lrs[5], 1.1),
                      "minimum": (lrs[8], 0.45)}


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_suggest_cuts_at_the_first_nan_or_inf(bad):
    window = [1.3, 1.2, 1.15, 1.1, 0.6, bad, 0.01, 0.6, 2.0]
    lrs, losses = _curve(window)
    suggestions, _ = suggest(lrs, losses, 20)
    # Judged: 1.3, 1.2, 1.15, 1.1, 0.6: valley 4 - 5 + 1 + 0 = 0.
    assert suggestions == {"valley": lrs[2], "steep": lrs[5],
                           "minimum": lrs[6] / 10}
    # Non-finite from the window's first point: nothing to judge.
    lrs, losses = _curve([bad] + window[1:])
    assert suggest(lrs, losses, 20) == (_NONE, {})


def test_valley_stays_in_the_valley():
    """fastai's valley index is -1 for a longest way down of 2 points at the
    start (it records the run's start one before it), which reads the last
    point, far past the valley: the valley starts at 0."""
    lrs, losses = _curve([3.0, 2.0, 5.0, 4.0])
    suggestions, points = suggest(lrs, losses, 20)
    assert _fastai_valley(np.array(lrs[2:6]), np.array(losses[2:6])) == lrs[5]
    assert suggestions["valley"] == lrs[2] and points["valley"] == (lrs[2], 3.0)
    # Never down: index 0, as fastai.
    lrs, losses = _curve([1.0, 2.0, 3.0])
    assert suggest(lrs, losses, 20)[0]["valley"] == lrs[2]


def _one_weight_sweep(num_steps, start_lr, end_lr, stop_div=True, callbacks=()):
    """loss = w ** 2 (w from 1, x = 1, y = 0): SGD at rate r makes w * (1 - 2r)."""
    inputs = keras.Input((1,))
    model = keras.Model(inputs, layers.Dense(1, use_bias=False,
                                             kernel_initializer="ones")(inputs))
    model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.01)), loss="mse")
    x, y = np.ones((1, 1), "float32"), np.zeros((1, 1), "float32")
    return difflr.lr_find(model, x, y, batch_size=1, start_lr=start_lr,
                          end_lr=end_lr, num_steps=num_steps, stop_div=stop_div,
                          verbose=0, callbacks=list(callbacks))


def _by_hand(rates):
    """The raw and smoothed losses of the one-weight sweep, and whether the
    smoothed loss went above 4 times its lowest, step by step."""
    w, average, best, raw, smoothed, above = 1.0, 0.0, math.inf, [], [], []
    for i, rate in enumerate(rates):
        raw.append(w * w)
        average = 0.98 * average + 0.02 * raw[-1]
        smoothed.append(average / (1 - 0.98 ** (i + 1)))
        best = min(best, smoothed[-1])
        above.append(smoothed[-1] > 4 * best)
        w = w * (1 - 2 * rate)
    return raw, smoothed, above


def test_divergence_at_the_last_step_is_not_stopping_early():
    # 3 steps at 0.01, 5, 2500: the loss is 1, 0.9604, 77.79 (28x the best
    # smoothed): only the last step diverges, and all 3 ran.
    result = _one_weight_sweep(3, 0.01, 2500.0)
    raw, smoothed, above = _by_hand([0.01, 5.0, 2500.0])
    assert above == [False, False, True]
    assert_close(result.raw_losses, raw, rtol=1e-6, atol=0)
    assert_close(result.losses, smoothed, rtol=1e-6, atol=0)
    assert len(result.learning_rates) == 3 and not result.stopped_early
    assert "3 of 3 steps, complete" in repr(result)
    # The same divergence with a 4th step to go: stopped early, after 3.
    result = _one_weight_sweep(4, 0.01, 0.01 * 500.0 ** 3)
    assert result.learning_rates[1] == pytest.approx(5.0, rel=1e-12)
    assert len(result.learning_rates) == 3 and result.stopped_early
    assert "3 of 4 steps, stopped early: diverged" in repr(result)


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, steps):
        super().__init__()
        self.steps, self.seen = steps, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.steps:
            self.model.stop_training = True


def test_a_sweep_stopped_by_a_callback_says_so():
    result = _one_weight_sweep(8, 1e-4, 1e-3, callbacks=[_StopAfter(3)])
    assert len(result.learning_rates) == 3 and not result.stopped_early
    assert "3 of 8 steps, stopped early by a callback" in repr(result)


@pytest.mark.parametrize("num_steps", range(2, 8))
def test_suggestions_are_none_up_to_six_steps_end_to_end(num_steps):
    """All `num_steps` run (no divergence at these rates); the window is
    steps 0 to the sixth from last: empty or one point up to 6 steps, two
    at 7 (4 steps used to be judged on steps 0..2)."""
    result = _one_weight_sweep(num_steps, 1e-4, 1e-2)
    raw, smoothed, above = _by_hand(result.learning_rates)
    assert len(result.learning_rates) == num_steps and not any(above)
    assert not result.stopped_early
    assert_close(result.losses, smoothed, rtol=1e-6, atol=0)
    if num_steps < 7:
        assert result.suggestions == _NONE and result.suggestion_points == {}
        assert "None" in repr(result)
        return
    # Two points going down: valley and steep at the first, minimum at the
    # second, a tenth of its rate.
    lrs = result.learning_rates
    assert smoothed[1] < smoothed[0]
    assert result.suggestions == {"valley": lrs[0], "steep": lrs[0],
                                  "minimum": lrs[1] / 10}


def test_plot_marks_each_suggestion_at_the_rate_its_legend_gives():
    window = [1.3, 1.2, 1.15, 1.1, 0.6, 0.5, 0.45, 0.6, 2.0]
    lrs, losses = _curve(window)
    suggestions, points = suggest(lrs, losses, 20)
    result = difflr.LRFindResult(
        learning_rates=lrs, losses=losses, raw_losses=losses,
        suggestions=suggestions, suggestion_points=points,
        stopped_early=False, num_steps=20)
    ax = result.plot()
    markers = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0])
               for line in ax.get_lines()[1:]}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(markers)
    # The minimum's rate, a tenth of 0.45's (step 8), is that of step 6 (the
    # rates grow 10x in 2 steps), where the curve is at 0.6.
    assert markers == {
        f"valley: {lrs[4]:.2e}": (lrs[4], 1.15),
        f"steep: {lrs[5]:.2e}": (lrs[5], 1.1),
        f"minimum: {lrs[8] / 10:.2e}": (lrs[8] / 10, pytest.approx(0.6, rel=1e-9)),
    }
    assert lrs[8] / 10 == pytest.approx(lrs[6], rel=1e-12)
    import matplotlib.pyplot as plt
    plt.close("all")


def test_multipliers_that_follow_a_schedule_are_held_at_the_first_step():
    """A warm-up on the `fit` layer (and a cosine on its decay) would move
    under the sweep: each is held at its value at the sweep's first step,
    the optimizer's `iterations` (3), then put back with the rest."""
    x, y = _linear_problem()
    model, fit, frozen = _linear_model()
    ramp = difflr.schedules.Ramp(start=2, steps=8)
    cosine = keras.optimizers.schedules.CosineDecay(1.0, 10)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.01, weight_decay=0.1),
                              [(fit.kernel, ramp), (fit.bias, 2.0), (frozen, 0.0)],
                              decay_multipliers=[(fit.kernel, cosine)])
    model.compile(opt, loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    before, config = _state(model), opt.get_config()
    m = float(to_numpy(ramp(3)))          # 1/8, and 3/8 three steps later
    d = float(to_numpy(cosine(3)))
    start, end, n = 1e-4, 1e-1, 6
    recorder = _Recorder([fit.kernel, fit.bias, frozen.kernel, frozen.bias])
    difflr.lr_find(model, x, y, batch_size=len(x), shuffle=False, start_lr=start,
                   end_lr=end, num_steps=n, stop_div=False, verbose=0,
                   callbacks=[recorder])
    # Plain SGD with decoupled weight decay: w <- w - lr_v (d wd w + g), at
    # lr_v = rate * m, every step.
    for i in range(n):
        w, b, fw, fb = (a.astype("float64") for a in recorder.before[i])
        pred = x @ (w + fw) + b + fb
        dpred = 2 * (pred - y) / pred.size
        rate = start * (end / start) ** (i / (n - 1))
        after = recorder.after[i]
        assert_close(after[0], w - m * rate * (d * 0.1 * w + x.T @ dpred),
                     rtol=1e-5, atol=1e-8, what=f"kernel at step {i}")
        assert_close(after[1], b - 2.0 * rate * (0.1 * b + dpred.sum(0)),
                     rtol=1e-5, atol=1e-8, what=f"bias at step {i}")
        assert np.array_equal(after[2], recorder.before[0][2])
    # Put back: the variables, the schedules in force, the rules.
    _assert_same_state(before, _state(model))
    assert isinstance(opt.schedule_for(fit.kernel), difflr.schedules.Ramp)
    assert isinstance(opt.decay_schedule_for(fit.kernel),
                      keras.optimizers.schedules.CosineDecay)
    assert opt.get_config() == config
    assert opt.multiplier_for(fit.kernel, step=5) == float(to_numpy(ramp(5)))
