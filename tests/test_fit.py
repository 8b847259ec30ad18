"""Training through model.compile / model.fit, compiled, on every backend."""

import contextlib

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, backend, counting_updates, to_numpy

B, D, O = 8, 5, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(B, D)).astype("float32"),
            rng.normal(size=(B, O)).astype("float32"))


def _linear_model():
    inputs = keras.Input((D,))
    dense = keras.layers.Dense(O, name="linear", kernel_initializer="glorot_uniform")
    return keras.Model(inputs, dense(inputs)), dense


def _numpy_sgd_reference(w, b, x, y, lrs, mults, wd, momentum):
    """Keras SGD (momentum, decoupled decay) per variable, by hand."""
    params, velocity = [w.copy(), b.copy()], [np.zeros_like(w), np.zeros_like(b)]
    for lr in lrs:
        pred = x @ params[0] + params[1]
        dpred = 2 * (pred - y) / pred.size        # mean squared error
        grads = [x.T @ dpred, dpred.sum(0)]
        for i, m in enumerate(mults):
            rate = lr * m
            params[i] = params[i] - params[i] * wd * rate
            velocity[i] = momentum * velocity[i] - rate * grads[i]
            params[i] = params[i] + velocity[i]
    return params


@pytest.mark.parametrize("jit_compile", [True, False])
def test_compiled_fit_matches_a_numpy_reference(jit_compile):
    x, y = _data()
    model, dense = _linear_model()
    w0, b0 = to_numpy(dense.kernel).copy(), to_numpy(dense.bias).copy()
    opt = difflr.LRMultiplier(
        keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=0.1),
        # Keras variables are unhashable: variable keys go in (key, value) pairs.
        [(dense.kernel, 0.2), ("linear/bias", 3.0)],
    )
    model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
    schedule = lambda epoch: 0.05 * 0.5 ** epoch  # acts on the base rate
    model.fit(x, y, batch_size=B, epochs=4, shuffle=False, verbose=0,
              callbacks=[keras.callbacks.LearningRateScheduler(schedule)])
    w, b = _numpy_sgd_reference(w0, b0, x, y, [schedule(e) for e in range(4)],
                                [0.2, 3.0], wd=0.1, momentum=0.9)
    assert_close(dense.kernel, w, rtol=1e-4, atol=1e-5)
    assert_close(dense.bias, b, rtol=1e-4, atol=1e-5)
    assert float(to_numpy(opt.learning_rate)) == pytest.approx(schedule(3))


class _SetAtBatch(keras.callbacks.Callback):
    """Calls set_multipliers at the start of one batch, the way users do."""

    def __init__(self, batch, layer_name, value):
        super().__init__()
        self.batch, self.layer_name, self.value = batch, layer_name, value
        self.snapshot = None
        self.traces = None  # set by the test to a list the update code fills
        self.traces_before = None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            model = self.model  # on JAX this syncs the training state
            model.optimizer.set_multipliers({model.get_layer(self.layer_name): self.value})
            self.traces_before = len(self.traces or [])
            self.snapshot = [to_numpy(v).copy() for v in
                             model.get_layer(self.layer_name).trainable_variables]


def _mlp():
    inputs = keras.Input((D,))
    h = keras.layers.Dense(6, activation="tanh", name="body")(inputs)
    outputs = keras.layers.Dense(O, name="head")(h)
    return keras.Model(inputs, outputs)


def _fit_with_freeze_at_batch_2(run_eagerly, count_traces=False):
    keras.utils.set_random_seed(7)
    x, y = np.concatenate([_data(0)[0]] * 4), np.concatenate([_data(0)[1]] * 4)
    model = _mlp()
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(0.01, weight_decay=0.05),
                              {"body/.*": 0.5})
    model.compile(optimizer=opt, loss="mse", run_eagerly=run_eagerly)
    traces = []
    freeze = _SetAtBatch(2, "body", 0.0)
    freeze.traces = traces
    with counting_updates(traces) if count_traces else contextlib.nullcontext():
        model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0,
                  callbacks=[freeze])
    return model, opt, freeze, traces


def test_set_multipliers_inside_compiled_fit_takes_effect_next_step_without_retracing():
    model, opt, freeze, traces = _fit_with_freeze_at_batch_2(
        run_eagerly=False, count_traces=backend() != "torch")
    body = model.get_layer("body")
    for v, frozen_at in zip(body.trainable_variables, freeze.snapshot):
        np.testing.assert_array_equal(to_numpy(v), frozen_at)
    assert opt.multiplier_for(body.kernel) == 0.0
    if backend() != "torch":
        # The per-variable update code runs only while the step is traced:
        # it was traced before the change and never again after it.
        assert freeze.traces_before > 0
        assert len(traces) == freeze.traces_before, "set_multipliers caused a retrace"
    eager_model, *_ = _fit_with_freeze_at_batch_2(run_eagerly=True)
    for a, b in zip(model.trainable_variables, eager_model.trainable_variables):
        assert_close(a, b, rtol=1e-5, atol=1e-6, what=a.path)


def test_reduce_lr_on_plateau_and_mixed_precision_keep_the_ratios():
    keras.config.set_dtype_policy("mixed_float16")
    x, y = _data()
    model = _mlp()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.05), {"body/.*": 0.0},
                              keep_frozen_state=True)
    model.compile(optimizer=opt, loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.optimizer.inner_optimizer is opt
    body_before = [to_numpy(v).copy() for v in model.get_layer("body").trainable_variables]
    head_before = to_numpy(model.get_layer("head").kernel).copy()
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0,
                                                min_delta=1e9, verbose=0)
    history = model.fit(x, y, batch_size=B, epochs=3, verbose=0, callbacks=[plateau])
    # The first epoch sets the best loss; the next two each halve the rate.
    assert float(to_numpy(opt.learning_rate)) == pytest.approx(0.05 * 0.5 ** 2)
    assert model.optimizer.learning_rate is not None  # readable through the wrapper
    assert history.history["learning_rate"][0] == pytest.approx(0.05)
    for v, before in zip(model.get_layer("body").trainable_variables, body_before):
        np.testing.assert_array_equal(to_numpy(v), before)
    assert not np.allclose(to_numpy(model.get_layer("head").kernel), head_before)


def test_the_issue_example_runs_as_written():
    backbone = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(96, 96, 3))
    inputs = keras.Input((96, 96, 3))
    outputs = keras.layers.Dense(10, name="head")(
        keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    model = keras.Model(inputs, outputs)
    opt = difflr.LRMultiplier(
        keras.optimizers.AdamW(1e-3, weight_decay=0.05),
        {backbone: 0.1, "head/bias": 2.0},
        decay_multipliers={keras.layers.BatchNormalization: 0.0},
    )
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((4, 96, 96, 3)).astype("float32")
    y = rng.integers(0, 10, size=(4,))
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert float(to_numpy(opt.learning_rate)) == pytest.approx(1e-3)
    head = model.get_layer("head")
    assert opt.multiplier_for(head.bias) == 2.0
    assert opt.multiplier_for(head.kernel) == 1.0
    assert all(opt.multiplier_for(v) == 0.1 for v in backbone.trainable_variables)
    bn = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    assert opt.decay_multiplier_for(bn.gamma) == 0.0
    opt.set_multipliers({backbone: 0.5})
    assert opt.multiplier_for(backbone.trainable_variables[0]) == 0.5


@pytest.mark.parametrize("how", ["fit", "apply"])
def test_optimizer_variable_paths_name_the_wrapper_once(how):
    """`<name>/lr_multipliers` and `<name>/<wrapped>/<slot>`, whoever builds
    the optimizer (Keras's `fit` opens the optimizer's name scope itself)."""
    model, _ = _linear_model()
    opt = difflr.LRMultiplier(keras.optimizers.Adam(0.01, name="inner"),
                              {"linear/bias": 0.5}, name="ft")
    x, y = _data()
    if how == "fit":
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, epochs=1, verbose=0)
    else:
        opt.apply([keras.ops.ones(v.shape) for v in model.trainable_variables],
                  model.trainable_variables)
    paths = sorted(v.path for v in opt.variables)
    assert paths == sorted(["ft/lr_multipliers", "ft/decay_multipliers",
                            "ft/unfreezing_per_variable", "ft/unfreezing_progress",
                            "inner/iteration", "inner/learning_rate"]
                           + [f"ft/inner/{p}" for p in (
                               "linear_kernel_momentum",
                               "linear_kernel_velocity",
                               "linear_bias_momentum",
                               "linear_bias_velocity")]), paths
