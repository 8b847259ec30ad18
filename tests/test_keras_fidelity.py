"""Regression tests for issue 14: difflr against Keras workflows no one here wrote.

Each test compares with an independent reference (a plain Keras optimizer at
the scaled rate, the bytes of a file on disk, the wrapped optimizer's own
behaviour), never with difflr itself. Only public APIs are used, of difflr and
of Keras. The docstring of each test names its item of issue 14.
"""

import os
import re
import warnings

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, backend, to_numpy, keras_hub_or_skip

B = 8


# Helpers.

def _data(n=32, d=4, o=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype("float32"),
            rng.normal(size=(n, o)).astype("float32"))


def _mlp(d=4, o=2, seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,))
    h = keras.layers.Dense(5, activation="tanh", name="body")(inputs)
    return keras.Model(inputs, keras.layers.Dense(o, name="head")(h))


def _twin(model):
    """A second model with the same architecture and the same weights."""
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def _weights(model_or_vars):
    variables = getattr(model_or_vars, "weights", model_or_vars)
    return [to_numpy(v).copy() for v in variables]


def _fixed_grads(variables, seed=5):
    rng = np.random.default_rng(seed)
    return [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32"))
            for v in variables]


def _clear_error(exc, member):
    """An error that says what went wrong: not an AttributeError or a crash
    deep inside, but a message naming the member or the wrapper."""
    message = str(exc)
    return (isinstance(exc, (NotImplementedError, TypeError, ValueError, RuntimeError))
            and not isinstance(exc, (UnboundLocalError, AttributeError))
            and len(message) >= 20
            and (member in message or "LRMultiplier" in message))


# Item 1: the TensorFlow custom training loop of Keras's guide.

def _tf_train(model, optimizers, x, y, steps=3):
    """Keras's guide "Writing a training loop from scratch" (TensorFlow):
    `optimizers` maps each optimizer to the indices of the variables it
    updates with `optimizer.apply(grads, variables)`."""
    import tensorflow as tf

    loss_fn = keras.losses.MeanSquaredError()
    variables = model.trainable_variables

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, variables)
        for opt, idx in optimizers:
            opt.apply([grads[i] for i in idx], [variables[i] for i in idx])
        return loss

    for step in range(steps):
        train_step(x[step * B:(step + 1) * B], y[step * B:(step + 1) * B])


@pytest.mark.skipif(backend() != "tensorflow", reason="TensorFlow custom loop")
@pytest.mark.parametrize("with_rules", [False, True], ids=["no_rules", "rules"])
def test_tf_function_custom_loop_apply_matches_plain_optimizers_per_group(with_rules):
    """Issue 14, item 1: `opt.apply(grads, model.trainable_variables)` inside
    `@tf.function` (the Keras guide's loop) trains like one plain Adam per rule
    group at the scaled rate, with and without rules."""
    x, y = _data()
    model = _mlp()
    reference = _twin(model)
    rules = {model.get_layer("body"): 0.1, "head/bias": 2.0} if with_rules else None
    opt = difflr.LRMultiplier(keras.optimizers.Adam(0.01), rules)
    _tf_train(model, [(opt, range(len(model.trainable_variables)))], x, y)

    paths = [v.path for v in reference.trainable_variables]
    rates = {p: 0.01 for p in paths}
    if with_rules:
        rates.update({"body/kernel": 0.001, "body/bias": 0.001, "head/bias": 0.02})
    groups = {}
    for i, p in enumerate(paths):
        groups.setdefault(rates[p], []).append(i)
    _tf_train(reference, [(keras.optimizers.Adam(rate), idx)
                          for rate, idx in groups.items()], x, y)
    for a, b in zip(model.trainable_variables, reference.trainable_variables):
        assert_close(a, b, rtol=1e-5, atol=1e-6, what=b.path)
    assert int(to_numpy(opt.iterations)) == 3


# Item 2: saving after compiling again.

def _fit_and_save(path):
    x, y = _data()
    model = _mlp()
    model.compile(optimizer=difflr.LRMultiplier(
        keras.optimizers.AdamW(0.01, weight_decay=0.05), {model.get_layer("body"): 0.5}),
        loss="mse")
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    model.save(path)
    with open(path, "rb") as f:
        return model, f.read()


def test_save_after_recompiling_with_layer_keyed_rules_loads_with_the_new_rules(tmp_path):
    """Issue 14, item 2: fit, save, compile again with a new LRMultiplier keyed
    by layer objects, save again: the save succeeds and the file loads with
    the new rules, which train like plain SGD at the scaled rates."""
    path = os.path.join(tmp_path, "m.keras")
    model, _ = _fit_and_save(path)
    head = model.get_layer("head")
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.SGD(0.1), {head: 0.25}),
                  loss="mse")
    model.save(path)  # must not raise
    assert os.path.getsize(path) > 0

    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, difflr.LRMultiplier)
    if not loaded.optimizer.built:
        loaded.optimizer.build(loaded.trainable_variables)
    assert loaded.optimizer.multiplier_for(loaded.get_layer("head").kernel) == 0.25
    assert loaded.optimizer.multiplier_for(loaded.get_layer("body").kernel) == 1.0

    # One step of the loaded model against plain SGD at 0.1 from the same weights:
    # the head moves a quarter as far, the body as far.
    x, y = _data()
    reference = _twin(loaded)
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = _weights(loaded.trainable_variables)
    loaded.fit(x[:B], y[:B], batch_size=B, epochs=1, verbose=0)
    reference.fit(x[:B], y[:B], batch_size=B, epochs=1, verbose=0)
    for v, r, w0 in zip(loaded.trainable_variables, reference.trainable_variables, before):
        scale = 0.25 if v.path.startswith("head/") else 1.0
        assert_close(to_numpy(v) - w0, scale * (to_numpy(r) - w0), rtol=1e-4, atol=1e-7,
                     what=v.path)


def test_an_optimizer_that_cannot_be_saved_leaves_a_whole_file(tmp_path):
    """Issue 14, item 2: Keras truncates the file before it asks the optimizer
    for its config, so difflr must not raise there. An optimizer whose rules
    do not resolve for the model (a rule keyed on a layer that is not in it)
    warns; the file is whole (the model and its weights load, equal to the
    model's), and loading the optimizer raises the reason."""
    path = os.path.join(tmp_path, "m.keras")
    model, _ = _fit_and_save(path)
    stranger = keras.layers.Dense(2, name="stranger")
    stranger.build((None, 3))  # not part of the model: its rule cannot resolve
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.SGD(0.1), {stranger: 0.5}),
                  loss="mse")
    with pytest.warns(UserWarning, match="saved without its rules.*stranger"):
        model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    with pytest.raises(ValueError, match="could not be saved.*stranger.*compile=False"):
        keras.models.load_model(path)


# Item 3: SwapEMAWeights under mixed precision.

class _RecordAroundValidation(keras.callbacks.Callback):
    """Records the weights after the last training batch and as validation
    begins (after SwapEMAWeights, which comes first in the list, swapped)."""

    def on_train_batch_end(self, batch, logs=None):
        self.trained = _weights(self.model.trainable_variables)

    def on_test_begin(self, logs=None):
        self.validated = _weights(self.model.trainable_variables)


def _ema_run(model, optimizer, x, y):
    model.compile(optimizer=optimizer, loss="mse")
    record = _RecordAroundValidation()
    model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0,
              validation_data=(x[:B], y[:B]),
              callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=False), record])
    # After fit, the model holds the final EMA weights (finalize_variable_values).
    return record.trained, record.validated, _weights(model.trainable_variables)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_swap_ema_weights_swaps_in_the_ema_of_the_wrapped_optimizer(policy):
    """Issue 14, item 3: `keras.callbacks.SwapEMAWeights` with
    `LRMultiplier(Adam(use_ema=True))`, also under `mixed_float16` (where
    compile adds a LossScaleOptimizer), does not raise, and the weights it
    swaps in for validation are the EMA weights a plain Adam(use_ema=True)
    run swaps in."""
    try:
        keras.mixed_precision.set_global_policy(policy)
        x, y = _data()
        model = _mlp()
        reference = _twin(model)
        got = _ema_run(model, difflr.LRMultiplier(
            keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5)), x, y)
        want = _ema_run(reference, keras.optimizers.Adam(0.05, use_ema=True,
                                                         ema_momentum=0.5), x, y)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    tol = dict(rtol=1e-5, atol=1e-6) if policy == "float32" else dict(rtol=2e-3, atol=2e-4)
    # In the reference, what validation saw is not the raw weights: the EMA.
    assert not np.allclose(want[0][0], want[1][0], rtol=1e-3, atol=1e-4)
    for name, a, b in zip(["trained", "swapped in", "after fit"], got, want):
        for i, (va, vb) in enumerate(zip(a, b)):
            assert_close(va, vb, what=f"{name} weights, variable {i}", **tol)


# Item 4: a model with no trainable variables.

def _no_trainable_model(seed=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    frozen = keras.layers.Dense(3, name="frozen")
    frozen.trainable = False
    # center/scale off: BatchNormalization without trainable variables, whose
    # moving statistics still update in training.
    bn = keras.layers.BatchNormalization(center=False, scale=False, momentum=0.5, name="bn")
    return keras.Model(inputs, bn(frozen(inputs)))


def test_a_model_with_no_trainable_variables_fits_as_with_a_plain_optimizer():
    """Issue 14, item 4: a model with no trainable variables (a frozen Dense,
    a BatchNormalization without scale and offset) fits with LRMultiplier
    exactly as with plain SGD: same metrics, same moving statistics."""
    x, y = _data(o=3)
    runs = []
    for optimizer in [keras.optimizers.SGD(0.1), difflr.LRMultiplier(keras.optimizers.SGD(0.1))]:
        model = _no_trainable_model()
        assert model.trainable_variables == []
        model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
        history = model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
        runs.append((history.history, _weights(model)))
    (h_plain, w_plain), (h_wrapped, w_wrapped) = runs
    assert h_wrapped.keys() == h_plain.keys()
    for key in h_plain:
        np.testing.assert_allclose(h_wrapped[key], h_plain[key], rtol=1e-6, err_msg=key)
    for a, b in zip(w_wrapped, w_plain):
        assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(w_plain[-2], 0.0)  # the moving mean did move


# Item 5: Keras's optimizer API through the wrapper.

def _steps(optimizer, variables, steps=3, seed=5):
    for step in range(steps):
        optimizer.apply(_fixed_grads(variables, seed + step), variables)


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=(3, 2)).astype("float32"), name="kernel"),
            keras.Variable(rng.normal(size=(2,)).astype("float32"), name="bias")]


def test_exclude_from_weight_decay_on_the_wrapper_matches_plain_adamw():
    """Issue 14, item 5: `exclude_from_weight_decay(var_names=[...])` called on
    the LRMultiplier takes effect: the excluded variables do not decay, exactly
    as with a plain AdamW given the same exclusion. (After the build, it does
    what the running Keras does: `tests/test_state.py`.)"""
    x, y = _data()
    model = _mlp()
    reference, undecayed = _twin(model), _twin(model)
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(0.05, weight_decay=0.5))
    plain = keras.optimizers.AdamW(0.05, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_names=["bias"])
    plain.exclude_from_weight_decay(var_names=["bias"])
    for m, o in [(model, opt), (reference, plain),
                 (undecayed, keras.optimizers.AdamW(0.05, weight_decay=0.5))]:
        m.compile(optimizer=o, loss="mse")
        m.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.trainable_variables, reference.trainable_variables):
        assert_close(a, b, rtol=1e-5, atol=1e-6, what=b.path)
    # The exclusion matters here: without it the biases end elsewhere.
    assert not np.allclose(to_numpy(reference.get_layer("head").bias),
                           to_numpy(undecayed.get_layer("head").bias), atol=1e-4)


# Hyperparameters the wrapper must read as the wrapped optimizer's, each with
# the wrapped optimizer's arguments that give it a value other than the default.
_HYPERPARAMETERS = {
    "weight_decay": dict(weight_decay=0.123),
    "use_ema": dict(use_ema=True),
    "ema_momentum": dict(use_ema=True, ema_momentum=0.7),
    "ema_overwrite_frequency": dict(use_ema=True, ema_overwrite_frequency=2),
    "clipnorm": dict(clipnorm=0.05),
    "clipvalue": dict(clipvalue=0.03),
    "global_clipnorm": dict(global_clipnorm=0.09),
    "gradient_accumulation_steps": dict(gradient_accumulation_steps=2),
    "loss_scale_factor": dict(loss_scale_factor=8.0),
}


def _numeric(x):
    if isinstance(x, (bool, int, float, type(None), str)):
        return x
    return to_numpy(x).tolist()


def _check_hyperparameter(name):
    kwargs = _HYPERPARAMETERS[name]
    inner = keras.optimizers.AdamW(0.05, **kwargs)
    opt = difflr.LRMultiplier(inner)
    assert _numeric(getattr(opt, name)) == _numeric(getattr(inner, name)), name
    # And it acts: 3 steps (4 with accumulation) equal a plain copy's.
    variables, reference = _variables(), _variables()
    plain = keras.optimizers.AdamW(0.05, **kwargs)
    _steps(opt, variables, steps=4)
    _steps(plain, reference, steps=4)
    if opt.use_ema or plain.use_ema:
        opt.finalize_variable_values(variables)
        plain.finalize_variable_values(reference)
    for a, b in zip(variables, reference):
        assert_close(a, b, rtol=1e-5, atol=1e-6, what=f"{name}: {b.path}")


@pytest.mark.parametrize("name", sorted(_HYPERPARAMETERS))
def test_hyperparameters_read_and_act_as_the_wrapped_optimizers(name):
    """Issue 14, item 5: `opt.weight_decay`, `opt.use_ema`, clipping, EMA and
    accumulation settings read on the LRMultiplier as on the wrapped
    optimizer, and training acts as with a plain copy of it."""
    _check_hyperparameter(name)


# The public surface of keras.optimizers.Optimizer, member by member: how the
# LRMultiplier must treat it, and the check that says it does.
#   delegated: reads and acts as the wrapped optimizer's;
#   own: the wrapper's own, with the same contract as on a plain optimizer;
#   raises: may instead raise a clear error (naming the member or the wrapper).

def _check_learning_rate(member):
    inner = keras.optimizers.SGD(0.25)
    opt = difflr.LRMultiplier(inner)
    assert float(to_numpy(opt.learning_rate)) == pytest.approx(0.25)
    opt.learning_rate = 0.5
    assert float(to_numpy(inner.learning_rate)) == pytest.approx(0.5)


def _check_iterations(member):
    opt, plain = difflr.LRMultiplier(keras.optimizers.Adam()), keras.optimizers.Adam()
    _steps(opt, _variables())
    _steps(plain, _variables())
    assert int(to_numpy(opt.iterations)) == int(to_numpy(plain.iterations)) == 3


def _check_apply(member):
    variables, reference = _variables(), _variables()
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(0.05, weight_decay=0.1))
    plain = keras.optimizers.AdamW(0.05, weight_decay=0.1)
    for step in range(3):
        grads = _fixed_grads(variables, step)
        if member == "apply_gradients":
            opt.apply_gradients(zip(grads, variables))
            plain.apply_gradients(zip(grads, reference))
        else:
            opt.apply(grads, variables)
            plain.apply(grads, reference)
    for a, b in zip(variables, reference):
        assert_close(a, b, what=b.path)


def _check_stateless_apply(member):
    """Acts as on a plain optimizer; where the plain one raises (TensorFlow
    has no stateless_apply), raises too."""
    variables, reference = _variables(), _variables()
    opt = difflr.LRMultiplier(keras.optimizers.Adam(0.05))
    plain = keras.optimizers.Adam(0.05)
    opt.build(variables)
    plain.build(reference)
    grads = _fixed_grads(variables)
    try:
        want, _ = plain.stateless_apply([v.value for v in plain.variables], grads,
                                        [v.value for v in reference])
    except Exception as plain_error:  # noqa: BLE001 - the wrapper must refuse too
        with pytest.raises(type(plain_error)):
            opt.stateless_apply([v.value for v in opt.variables], grads,
                                [v.value for v in variables])
        return
    new, _ = opt.stateless_apply([v.value for v in opt.variables], grads,
                                 [v.value for v in variables])
    for a, b in zip(new, want):
        assert_close(a, b)


def _check_build(member):
    variables = _variables()
    inner = keras.optimizers.Adam(0.05)
    opt = difflr.LRMultiplier(inner)
    assert not opt.built
    opt.build(variables)
    assert opt.built
    # All of the wrapped optimizer's state is the wrapper's state (saved with it).
    ids = {id(v) for v in opt.variables}
    assert all(id(v) in ids for v in inner.variables)
    plain = keras.optimizers.Adam(0.05)
    plain.build(_variables())
    assert len(opt.variables) >= len(plain.variables)


def _check_exclude_from_weight_decay(member):
    variables, reference = _variables(), _variables()
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(0.05, weight_decay=0.5))
    plain = keras.optimizers.AdamW(0.05, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_list=[variables[1]])
    plain.exclude_from_weight_decay(var_list=[reference[1]])
    _steps(opt, variables)
    _steps(plain, reference)
    for a, b in zip(variables, reference):
        assert_close(a, b, what=b.path)


def _check_finalize_variable_values(member):
    variables, reference = _variables(), _variables()
    opt = difflr.LRMultiplier(keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5))
    plain = keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5)
    _steps(opt, variables)
    _steps(plain, reference)
    opt.finalize_variable_values(variables)
    plain.finalize_variable_values(reference)
    for a, b in zip(variables, reference):
        assert_close(a, b, what=b.path)


def _check_config(member):
    inner = keras.optimizers.AdamW(0.03, weight_decay=0.2, clipnorm=0.5)
    opt = difflr.LRMultiplier(inner)
    config = opt.get_config()
    again = difflr.LRMultiplier.from_config(config)
    assert isinstance(again, difflr.LRMultiplier)
    assert float(to_numpy(again.learning_rate)) == pytest.approx(0.03)
    for name in ["weight_decay", "clipnorm"]:
        assert _numeric(getattr(again, name)) == _numeric(getattr(inner, name)), name
    # The round trip keeps the configuration (the wrapped optimizer's class
    # may be spelled differently, as long as it deserializes to the same one).
    config_again = again.get_config()
    wrapped, wrapped_again = config.pop("optimizer", None), config_again.pop("optimizer", None)
    assert config_again == config
    if wrapped is not None:
        assert wrapped_again["config"] == wrapped["config"]
        # (on torch, Keras's backend subclass of AdamW)
        cls = type(keras.optimizers.deserialize(wrapped))
        assert type(keras.optimizers.deserialize(wrapped_again)) is cls
        assert issubclass(cls, keras.optimizers.AdamW)


def _trained_pair():
    variables = _variables()
    opt = difflr.LRMultiplier(keras.optimizers.Adam(0.05))
    _steps(opt, variables)
    fresh = difflr.LRMultiplier(keras.optimizers.Adam(0.05))
    fresh.build(variables)
    return opt, fresh


def _check_own_variables(member):
    opt, fresh = _trained_pair()
    store = {}
    opt.save_own_variables(store)
    fresh.load_own_variables(store)
    assert len(fresh.variables) == len(opt.variables)
    for a, b in zip(fresh.variables, opt.variables):
        assert_close(a, b, what=b.path)


def _check_set_weights(member):
    opt, fresh = _trained_pair()
    fresh.set_weights([to_numpy(v) for v in opt.variables])
    for a, b in zip(fresh.variables, opt.variables):
        assert_close(a, b, what=b.path)


def _check_scale_loss(member):
    opt = difflr.LRMultiplier(keras.optimizers.SGD(loss_scale_factor=8.0))
    plain = keras.optimizers.SGD(loss_scale_factor=8.0)
    assert float(to_numpy(opt.scale_loss(2.0))) == float(to_numpy(plain.scale_loss(2.0))) == 16.0


def _check_assign(member):
    opt, plain = difflr.LRMultiplier(keras.optimizers.SGD()), keras.optimizers.SGD()
    a, b = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones(3, "float32"))
    value = keras.ops.convert_to_tensor(np.arange(3, dtype="float32"))
    getattr(opt, member)(a, value)
    getattr(plain, member)(b, value)
    assert_close(a, b)


def _check_add_variable(member):
    """Acts as on a plain optimizer (a variable of the right shape and value,
    part of `optimizer.variables`, so saved), or raises a clear error."""
    variables = _variables()
    opt = difflr.LRMultiplier(keras.optimizers.SGD())
    opt.build(variables)
    try:
        if member == "add_variable":
            new = [opt.add_variable(shape=(2,), initializer="ones", name="extra")]
            want = [np.ones(2)]
        elif member == "add_variable_from_reference":
            new = [opt.add_variable_from_reference(variables[0], "extra")]
            want = [np.zeros((3, 2))]
        else:
            new = opt.add_optimizer_variables(variables, "extra")
            want = [np.zeros(v.shape) for v in variables]
    except Exception as exc:  # noqa: BLE001 - judged below
        assert _clear_error(exc, member), f"unclear error from {member}: {exc!r}"
        return
    ids = {id(v) for v in opt.variables}
    for v, w in zip(new, want):
        assert_close(v, w)
        assert id(v) in ids, f"{member}: the new variable is not in optimizer.variables"


def _check_update_step(member):
    """Acts as the wrapped optimizer's `update_step`, or raises a clear error."""
    variables, reference = _variables(), _variables()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1))
    plain = keras.optimizers.SGD(0.1)
    opt.build(variables)
    plain.build(reference)
    grad = _fixed_grads(variables)[0]
    try:
        opt.update_step(grad, variables[0], 0.1)
    except Exception as exc:  # noqa: BLE001 - judged below
        assert _clear_error(exc, member), f"unclear error from update_step: {exc!r}"
        return
    plain.update_step(grad, reference[0], 0.1)
    assert_close(variables[0], reference[0])


def _check_name(member):
    assert isinstance(difflr.LRMultiplier("sgd").name, str)


def _check_variables(member):
    _check_build(member)


_MEMBERS = {
    # name: (kind, check)
    "learning_rate": ("delegated", _check_learning_rate),
    "iterations": ("delegated", _check_iterations),
    "weight_decay": ("delegated", lambda m: _check_hyperparameter(m)),
    "use_ema": ("delegated", lambda m: _check_hyperparameter(m)),
    "ema_momentum": ("delegated", lambda m: _check_hyperparameter(m)),
    "ema_overwrite_frequency": ("delegated", lambda m: _check_hyperparameter(m)),
    "clipnorm": ("delegated", lambda m: _check_hyperparameter(m)),
    "clipvalue": ("delegated", lambda m: _check_hyperparameter(m)),
    "global_clipnorm": ("delegated", lambda m: _check_hyperparameter(m)),
    "gradient_accumulation_steps": ("delegated", lambda m: _check_hyperparameter(m)),
    "loss_scale_factor": ("delegated", lambda m: _check_hyperparameter(m)),
    "scale_loss": ("delegated", _check_scale_loss),
    "exclude_from_weight_decay": ("delegated", _check_exclude_from_weight_decay),
    "finalize_variable_values": ("delegated", _check_finalize_variable_values),
    "apply": ("own", _check_apply),
    "apply_gradients": ("own", _check_apply),
    "stateless_apply": ("own", _check_stateless_apply),
    "build": ("own", _check_build),
    "built": ("own", _check_build),
    "variables": ("own", _check_variables),
    "name": ("own", _check_name),
    "get_config": ("own", _check_config),
    "from_config": ("own", _check_config),
    "save_own_variables": ("own", _check_own_variables),
    "load_own_variables": ("own", _check_own_variables),
    "set_weights": ("own", _check_set_weights),
    "assign": ("own", _check_assign),
    "assign_add": ("own", _check_assign),
    "assign_sub": ("own", _check_assign),
    "add_variable": ("raises", _check_add_variable),
    "add_variable_from_reference": ("raises", _check_add_variable),
    "add_optimizer_variables": ("raises", _check_add_variable),
    "update_step": ("raises", _check_update_step),
}


def _public_surface():
    """Every public name of `keras.optimizers.Optimizer`: its class attributes
    and the attributes its constructor sets."""
    names = {n for n in dir(keras.optimizers.Optimizer) if not n.startswith("_")}
    instance = keras.optimizers.Optimizer(learning_rate=0.1)
    names |= {n for n in dir(instance) if not n.startswith("_")}
    return names


def test_the_member_table_covers_the_public_surface_of_keras_optimizers():
    """Issue 14, item 5: every public member of `keras.optimizers.Optimizer` is
    in the table of how the wrapper treats it; a member a new Keras adds fails
    here until someone decides and tests it."""
    missing = sorted(_public_surface() - set(_MEMBERS))
    assert not missing, f"public Optimizer members with no expectation in _MEMBERS: {missing}"


@pytest.mark.parametrize("member", sorted(_MEMBERS))
def test_each_public_optimizer_member_acts_as_on_the_wrapped_optimizer(member):
    """Issue 14, item 5: the member, used on an LRMultiplier, acts as on the
    wrapped optimizer (checked against a plain copy of it), or, where the
    table allows, raises a clear error."""
    kind, check = _MEMBERS[member]
    assert kind in ("delegated", "own", "raises")
    check(member)


# Items 6 and 7: KerasHub backbones.

def _block_of(path):
    """The transformer block a KerasHub variable belongs to, from its path."""
    match = re.search(r"(?:transformer_block|transformer_layer|layers)_(\d+)/", path)
    return None if match is None else int(match.group(1))


def _group_of_each_variable(groups):
    where = {}
    for i, group in enumerate(groups):
        for layer in group if isinstance(group, (list, tuple)) else [group]:
            # (not `layer.trainable_variables`: a block frozen by `enable_lora`
            # lists none, though its LoRA layers train)
            for v in (w for w in layer.weights if w.trainable):
                where[id(v)] = i
    return where


def _check_groups_follow_blocks(backbone, num_layers, others=1):
    groups = difflr.groups(backbone)
    where = _group_of_each_variable(groups)
    by_block = {}
    for v in backbone.trainable_variables:
        assert id(v) in where, f"{v.path} is in no group"
        block = _block_of(v.path)
        if block is not None:
            by_block.setdefault(block, set()).add(where[id(v)])
    assert len(by_block) == num_layers
    assert all(len(g) == 1 for g in by_block.values()), f"a block split over groups: {by_block}"
    block_groups = [next(iter(by_block[b])) for b in sorted(by_block)]
    assert len(set(block_groups)) == num_layers, (
        f"{num_layers} blocks in groups {block_groups}: {groups}")
    assert block_groups == sorted(block_groups)  # bottom to head
    assert len(groups) >= num_layers + others  # plus the embeddings (and head)


def _check_layerwise_decay_per_block(backbone, num_layers):
    opt = difflr.LRMultiplier("sgd", difflr.layerwise_decay(backbone, decay=0.5))
    opt.build(backbone.trainable_variables)
    by_block = {}
    for v in backbone.trainable_variables:
        block = _block_of(v.path)
        if block is not None:
            by_block.setdefault(block, set()).add(opt.multiplier_for(v))
    assert all(len(m) == 1 for m in by_block.values()), by_block
    rates = [next(iter(by_block[b])) for b in sorted(by_block)]
    assert len(set(rates)) == num_layers, f"per-block rates {rates}"
    assert rates == sorted(rates)  # deeper blocks train faster
    for lower, upper in zip(rates, rates[1:]):
        assert lower == pytest.approx(upper * 0.5)


def _vit(num_layers=3):
    keras_hub = keras_hub_or_skip()
    return keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=8, num_layers=num_layers, num_heads=2,
        hidden_dim=8, mlp_dim=16)


def _dinov2(num_layers=3):
    keras_hub = keras_hub_or_skip()
    return keras_hub.models.DINOV2Backbone(
        patch_size=8, num_layers=num_layers, hidden_dim=8, num_heads=2, intermediate_dim=16,
        image_shape=(16, 16, 3), position_embedding_shape=(16, 16, 3))


def _llama(num_layers=3):
    keras_hub = keras_hub_or_skip()
    return keras_hub.models.LlamaBackbone(
        vocabulary_size=32, num_layers=num_layers, num_query_heads=2, hidden_dim=8,
        intermediate_dim=16, num_key_value_heads=1)


@pytest.mark.parametrize("make", [_vit, _dinov2], ids=["vit", "dinov2"])
def test_groups_follow_the_blocks_nested_in_a_kerashub_encoder_layer(make):
    """Issue 14, item 6: KerasHub ViT and DINOv2 keep their blocks inside an
    encoder layer: `difflr.groups` still gives one group per block, in order,
    plus the embeddings."""
    _check_groups_follow_blocks(make(num_layers=3), 3)


@pytest.mark.parametrize("make", [_vit, _dinov2], ids=["vit", "dinov2"])
def test_layerwise_decay_gives_each_nested_kerashub_block_its_own_rate(make):
    """Issue 14, item 6: `difflr.layerwise_decay` on KerasHub ViT and DINOv2
    gives each block a distinct rate, a factor `decay` apart."""
    _check_layerwise_decay_per_block(make(num_layers=3), 3)


class _FusedBlocks(keras.layers.Layer):
    """Six transformer blocks' weights in one layer without sublayers: no
    grouping can split them; only the variable names tell there are six."""

    def build(self, input_shape):
        d = input_shape[-1]
        self.kernels = [self.add_weight(shape=(d, d), name=f"transformer_layer_{i}_kernel")
                        for i in range(6)]

    def call(self, x):
        for kernel in self.kernels:
            x = keras.ops.tanh(keras.ops.matmul(x, kernel))
        return x


def test_layerwise_decay_warns_when_it_finds_far_fewer_groups_than_blocks():
    """Issue 14, item 6: a recipe that finds far fewer groups (3) than the model
    has blocks (6, in one opaque layer) says so instead of silently giving all
    six blocks one rate."""
    inputs = keras.Input((8,))
    x = keras.layers.Dense(8, name="token_embedding")(inputs)
    x = _FusedBlocks(name="encoder")(x)
    model = keras.Model(inputs, keras.layers.LayerNormalization(name="final_norm")(x))
    with pytest.warns(UserWarning, match=r"(?i)block|group"):
        difflr.layerwise_decay(model, decay=0.5)


def test_groups_and_rules_follow_the_blocks_of_a_kerashub_backbone_with_lora():
    """Issue 14, item 7: after `backbone.enable_lora(rank)` groups still follow
    the decoder blocks, layer-wise decay still differs per block, and a rule
    keyed on a block gives its LoRA adapters (lora_kernel_a/b) the block's
    multiplier: one SGD step moves them at the scaled rate."""
    backbone = _llama(num_layers=3)
    backbone.enable_lora(2)
    trainable = backbone.trainable_variables
    assert trainable and all("lora_kernel" in v.path for v in trainable)
    _check_groups_follow_blocks(backbone, 3, others=0)  # only the adapters train
    _check_layerwise_decay_per_block(backbone, 3)

    block0 = backbone.get_layer("transformer_layer_0")
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1), {block0: 0.25})
    opt.build(trainable)
    before = _weights(trainable)
    grads = _fixed_grads(trainable)
    opt.apply(grads, trainable)
    for v, w0, g in zip(trainable, before, grads):
        m = 0.25 if v.path.startswith("transformer_layer_0/") else 1.0
        assert opt.multiplier_for(v) == m, v.path
        assert_close(v, w0 - 0.1 * m * to_numpy(g), what=v.path)


# Item 8: JAX, set_multipliers on an optimizer captured by a callback.

class _FreezeCaptured(keras.callbacks.Callback):
    """Keeps the optimizer and the layer from its __init__: never touches
    `self.model` (which would sync JAX's training state)."""

    def __init__(self, optimizer, layer, batch):
        super().__init__()
        self.optimizer, self.layer, self.batch = optimizer, layer, batch

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            self.optimizer.set_multipliers({self.layer: 0.0})


@pytest.mark.skipif(backend() != "jax", reason="JAX's training state")
def test_set_multipliers_on_a_captured_optimizer_takes_effect_or_refuses_on_jax():
    """Issue 14, item 8: `set_multipliers` on an optimizer a callback captured in
    its `__init__`, during a JAX fit, either freezes the layer from the next
    step (as a fit stopped after 2 steps leaves it) or raises a clear error;
    `multiplier_for` never reports a value the device does not use."""
    x, y = _data(n=48)
    model = _mlp()
    reference = _twin(model)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1))
    model.compile(optimizer=opt, loss="mse")
    body = model.get_layer("body")
    try:
        model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0,
                  callbacks=[_FreezeCaptured(opt, body, batch=2)])
    except Exception as exc:  # noqa: BLE001 - refusing is allowed, if clear
        assert _clear_error(exc, "set_multipliers") or "self.model" in str(exc), repr(exc)
        assert opt.multiplier_for(body.kernel) == 1.0, "refused, yet reports the new value"
        return

    # Reference: plain SGD for the 2 steps before the freeze.
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    reference.fit(x[:2 * B], y[:2 * B], batch_size=B, epochs=1, shuffle=False, verbose=0)
    reported = opt.multiplier_for(body.kernel)
    if reported == 0.0:
        for v, r in zip(body.trainable_variables, reference.get_layer("body").trainable_variables):
            assert_close(v, r, rtol=1e-6, atol=1e-7,
                         what=f"{v.path}: multiplier_for says 0, but it kept training")
        model.fit(x, y, batch_size=B, epochs=1, verbose=0)  # and in later fits
        for v, r in zip(body.trainable_variables, reference.get_layer("body").trainable_variables):
            assert_close(v, r, rtol=1e-6, atol=1e-7, what=f"{v.path}, second fit")
    else:
        pytest.fail(f"set_multipliers was silently ignored: multiplier_for says {reported}")


# Item 9: multipliers beyond float32.

@pytest.mark.parametrize("value", [1e39, 1e-50])
@pytest.mark.parametrize("where", ["constructor", "set_multipliers", "decay"])
def test_a_multiplier_outside_float32_range_is_refused(value, where):
    """Issue 14, item 9: a multiplier of 1e39 (inf in float32) or 1e-50 (0 in
    float32, a silent freeze) raises a ValueError that says why, at
    construction or at `set_multipliers`."""
    model = _mlp()
    head = model.get_layer("head")
    with pytest.raises(ValueError, match=r"(?i)float32|range"):
        if where == "constructor":
            difflr.LRMultiplier("sgd", {head: value})
        elif where == "decay":
            difflr.LRMultiplier(keras.optimizers.AdamW(weight_decay=0.1),
                                decay_multipliers={head: value})
        else:
            opt = difflr.LRMultiplier("sgd")
            opt.build(model.trainable_variables)
            opt.set_multipliers({head: value})


# Item 10: 0-d tensors as multipliers.

def _zero_d(kind, value):
    if kind == "keras":
        return keras.ops.convert_to_tensor(value)
    if backend() == "tensorflow":
        import tensorflow as tf
        return tf.constant(value)
    if backend() == "jax":
        import jax.numpy as jnp
        return jnp.asarray(value, dtype="float32")
    import torch
    return torch.tensor(value)


@pytest.mark.parametrize("kind", ["keras", "native"])
@pytest.mark.parametrize("where", ["constructor", "set_multipliers"])
def test_a_zero_d_tensor_multiplier_is_accepted_on_every_backend(kind, where):
    """Issue 14, item 10: a 0-d tensor (`keras.ops.convert_to_tensor(0.5)`, or
    the backend's own) is a multiplier like the float 0.5: one SGD step moves
    the head at half the rate."""
    model = _mlp()
    head = model.get_layer("head")
    if where == "constructor":
        opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1), {head: _zero_d(kind, 0.5)})
        opt.build(model.trainable_variables)
    else:
        opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1))
        opt.build(model.trainable_variables)
        opt.set_multipliers({head: _zero_d(kind, 0.5)})
    variables = model.trainable_variables
    before, grads = _weights(variables), _fixed_grads(variables)
    opt.apply(grads, variables)
    for v, w0, g in zip(variables, before, grads):
        m = 0.5 if v.path.startswith("head/") else 1.0
        assert opt.multiplier_for(v) == m
        assert_close(v, w0 - 0.1 * m * to_numpy(g), what=v.path)


# Item 11: errors and reports that say what is going on.

def test_a_rule_callable_that_raises_is_named_with_the_variable():
    """Issue 14, item 11: when a rule callable raises, the error names the rule
    and the variable it was called on."""
    model = _mlp()

    def picky_head_rule(variable):
        if variable.path == "head/bias":
            raise RuntimeError("boom")
        return None

    opt = difflr.LRMultiplier("sgd", [(picky_head_rule, 2.0)])
    with pytest.raises(Exception) as info:
        opt.build(model.trainable_variables)
    text = str(info.value)
    assert "picky_head_rule" in text and "head/bias" in text, repr(info.value)


def test_decay_multipliers_without_weight_decay_warn_or_refuse():
    """Issue 14, item 11: `decay_multipliers` with a wrapped optimizer that has
    no weight decay do nothing: a UserWarning or a ValueError says so."""
    model = _mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opt = difflr.LRMultiplier(keras.optimizers.Adam(0.01),
                                      decay_multipliers={model.get_layer("head"): 0.0})
            opt.build(model.trainable_variables)
        except ValueError as exc:
            assert re.search(r"(?i)weight.decay", str(exc)), str(exc)
            return
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any(re.search(r"(?i)weight.decay", m) for m in messages), (
        f"no warning about weight decay; warnings: {messages}")


def _decay_column(model, opt):
    lines = []
    difflr.summary(model, opt, expand=True, print_fn=lines.append)
    header = next(line for line in lines if "Decay mult" in line)
    at = header.index("Decay mult")
    column = {}
    for line in lines:
        for v in model.trainable_variables:
            if re.match(rf"\s*\d+\s+{re.escape(v.path)}\s", line):
                column[v.path] = line[at:].split()[0]
    assert len(column) == len(model.trainable_variables), lines
    return column


@pytest.mark.parametrize("where", ["wrapped", "wrapper"])
def test_summary_shows_no_decay_for_variables_excluded_from_weight_decay(where):
    """Issue 14, item 11: `difflr.summary(expand=True)` shows decay 0 (or
    "excluded") for the variables the wrapped optimizer excludes from weight
    decay (as plain AdamW does: it leaves them undecayed), 1 for the others."""
    model = _mlp()
    inner = keras.optimizers.AdamW(0.01, weight_decay=0.1)
    opt = difflr.LRMultiplier(inner)
    (inner if where == "wrapped" else opt).exclude_from_weight_decay(var_names=["bias"])
    opt.build(model.trainable_variables)
    column = _decay_column(model, opt)
    for path, shown in column.items():
        if path.endswith("bias"):
            assert shown in ("0", "excluded"), f"{path}: decay shown as {shown}"
        else:
            assert shown == "1", f"{path}: decay shown as {shown}"


# Item 12: set_multipliers with one key per variable.

class _ManyScalars(keras.layers.Layer):
    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def build(self, input_shape):
        self.scalars = [self.add_weight(shape=(1,), initializer="ones", name=f"s{i}")
                        for i in range(self.n)]

    def call(self, x):
        total = self.scalars[0]
        for scalar in self.scalars[1:]:
            total = total + scalar
        return x * total


def _many_variables_model(n):
    inputs = keras.Input((1,))
    return keras.Model(inputs, _ManyScalars(n, name="many")(inputs))


def test_set_multipliers_with_2000_per_variable_keys_is_exact():
    """Issue 14, item 12: `set_multipliers` with one key per variable (2000
    variables) gives each variable its own value. (Its cost is measured, not
    asserted, by benchmarks/set_multipliers_scaling.py.)"""
    n = 2000
    model = _many_variables_model(n)
    variables = model.trainable_variables
    assert len(variables) == n
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1))
    opt.build(variables)
    values = [(i % 7) / 4 for i in range(n)]
    opt.set_multipliers(list(zip(variables, values)))
    assert [opt.multiplier_for(v) for v in variables] == values


def test_per_variable_keys_train_each_variable_at_its_own_rate():
    """Issue 14, item 12: after `set_multipliers` with one key per variable, a
    `fit` step moves each variable as plain SGD would at its own scaled rate
    (a smaller model: the step, not the scale, is checked here)."""
    n = 60
    x, y = np.ones((4, 1), "float32"), np.zeros((4, 1), "float32")
    model = _many_variables_model(n)
    reference = _twin(model)
    variables = model.trainable_variables
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1))
    opt.build(variables)
    values = [(i % 7) / 4 for i in range(n)]
    opt.set_multipliers(list(zip(variables, values)))
    before = np.concatenate(_weights(variables))
    for m, o in [(model, opt), (reference, keras.optimizers.SGD(0.1))]:
        m.compile(optimizer=o, loss="mse")
        m.fit(x, y, batch_size=4, epochs=1, verbose=0)
    # Every scalar has the same gradient here: plain SGD moves each by one step.
    step = np.concatenate(_weights(reference.trainable_variables)) - before
    assert np.all(np.abs(step) > 1e-4)
    np.testing.assert_allclose(np.concatenate(_weights(variables)) - before,
                               np.asarray(values) * step, rtol=1e-5, atol=1e-7)


def test_set_multipliers_calls_a_callable_rule_a_linear_number_of_times():
    """Issue 14, item 12: the work of `set_multipliers` with one key per variable
    grows linearly, counted (not timed) through the calls of a callable rule
    in the same map: doubling the variables at most doubles them (plus slack)."""
    counts = []
    for n in (250, 500):
        model = _many_variables_model(n)
        variables = model.trainable_variables
        calls = []

        def count(variable):
            calls.append(1)
            return 1.0 if variable.path == "many/s0" else None

        opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1), [(count, 1.0)])
        opt.build(variables)
        calls.clear()
        opt.set_multipliers([(v, 0.5) for v in variables])
        assert all(opt.multiplier_for(v) == 0.5 for v in variables)
        counts.append(len(calls))
    assert counts[1] <= 2 * counts[0] + 10, f"callable calls for 250/500 variables: {counts}"


class _CountingPath(str):
    """A path key that counts how often it is compared with another string."""

    comparisons = 0

    def __eq__(self, other):
        _CountingPath.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.parametrize("keys", ["paths", "variables"])
def test_set_multipliers_compares_keys_a_linear_number_of_times(keys):
    """Issue 14, item 12: parsing, merging and resolving one key per variable
    is linear, counted through the keys' comparisons (the quadratic version
    compared every new path with every earlier one, and every path with
    every variable's: about n^2 comparisons, 180,000 here)."""
    n = 300
    model = _many_variables_model(n)
    variables = model.trainable_variables
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1),
                              [(_CountingPath(v.path), 1.0) for v in variables])
    opt.build(variables)
    _CountingPath.comparisons = 0
    if keys == "paths":
        opt.set_multipliers([(_CountingPath(v.path), 0.5) for v in variables])
    else:
        opt.set_multipliers([(v, 0.5) for v in variables])
    assert all(opt.multiplier_for(v) == 0.5 for v in variables)
    assert _CountingPath.comparisons <= 10 * n, _CountingPath.comparisons


def test_weight_decay_set_on_the_wrapper_after_build_is_refused():
    """Which variables decay, and by how much, is decided when the optimizer is
    built: a new `weight_decay` afterwards would read back but not act (plain
    Keras on torch would apply it), so it is refused; before the build it acts
    on the wrapped optimizer."""
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(0.01, weight_decay=0.1))
    opt.weight_decay = 0.2
    assert opt.inner_optimizer.weight_decay == 0.2
    opt.build(_variables())
    with pytest.raises(ValueError, match="weight_decay was set after the optimizer was built"):
        opt.weight_decay = 0.9
    assert opt.inner_optimizer.weight_decay == 0.2


def test_a_fit_of_no_epochs_acts_as_with_the_plain_optimizer():
    """TensorFlow's `fit` calls `finalize_variable_values` even when it runs no
    epoch (`initial_epoch == epochs`, as when resuming a finished run), before
    the optimizer was ever built: it acts as with a plain optimizer. (With
    `use_ema=True` plain Keras itself fails there on TensorFlow.)"""
    x, y = _data()
    model = _mlp()
    reference = _twin(model)
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.Adam(0.01)), loss="mse")
    reference.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    for m in (model, reference):
        m.fit(x, y, initial_epoch=1, epochs=1, verbose=0)
    for a, b in zip(_weights(model.trainable_variables),
                    _weights(reference.trainable_variables)):
        np.testing.assert_array_equal(a, b)
