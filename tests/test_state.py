"""One source of truth: the multiplier vectors are optimizer variables, and
whatever Keras writes into them trains and is reported.

Each restore path is run on a difflr model and, as the reference, on a plain
optimizer's `learning_rate` through the same path; the steps after a restore
are compared with a plain optimizer per variable at the restored rate.
"""

import os

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, backend, to_numpy

RATE = 0.1


def _model():
    inputs = keras.Input((4,))
    body = keras.layers.Dense(3, name="body")
    head = keras.layers.Dense(2, name="head")
    return keras.Model(inputs, head(body(inputs))), body, head


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4)).astype("float32"),
            rng.normal(size=(n, 2)).astype("float32"))


def _copy(values):
    return [np.array(to_numpy(v), copy=True) for v in values]


def _lr_vector(optimizer):
    """The learning-rate multiplier vector, found in `optimizer.variables`."""
    return next(v for v in optimizer.variables if v.name == "lr_multipliers")


def _two_models():
    """Models A and B on the same two layers, `(model_a, model_b, body)`."""
    inputs = keras.Input((4,))
    body = keras.layers.Dense(3, name="body")
    head = keras.layers.Dense(2, name="head")
    other = keras.Input((4,))
    return (keras.Model(inputs, head(body(inputs))),
            keras.Model(other, head(body(other))), body)


def _state_tree_copy(model):
    return keras.tree.map_structure(
        lambda a: np.array(to_numpy(a), copy=True), model.get_state_tree())


# Each path: `save(model, fit_kwargs, tmp)` runs one epoch of `fit` and takes
# a checkpoint at its end; `restore(model, tmp)` writes it back.

def _fit(model, callbacks=()):
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=list(callbacks))


class _Paths:
    @staticmethod
    def set_state_tree(model, tmp):
        _fit(model)
        tree = _state_tree_copy(model)
        return lambda: model.set_state_tree(tree)

    @staticmethod
    def assign(model, tmp):
        _fit(model)
        values = _copy(model.optimizer.variables)
        return lambda: [v.assign(a) for v, a in zip(model.optimizer.variables, values)]

    @staticmethod
    def weights_file(model, tmp):
        _fit(model)
        path = os.path.join(tmp, "ckpt.weights.h5")
        model.save_weights(path)
        return lambda: model.load_weights(path)

    @staticmethod
    def orbax(model, tmp):
        directory = os.path.join(tmp, "orbax")
        _fit(model, [keras.callbacks.OrbaxCheckpoint(
            directory, save_freq="epoch", save_on_background=False)])
        return lambda: model.load_weights(directory)


# (Keras's Orbax checkpoints exist from Keras 3.13 on: the oldest supported
# Keras has the other paths only.)
PATHS = ["set_state_tree", "assign", "weights_file"] + (
    ["orbax"] if hasattr(keras.callbacks, "OrbaxCheckpoint") else [])


@pytest.mark.parametrize("path", PATHS)
def test_plain_keras_restores_its_learning_rate_through_the_path(path, tmp_path):
    """The reference: what the same path does to a plain optimizer."""
    model, _, _ = _model()
    model.compile(keras.optimizers.SGD(RATE), "mse")
    restore = getattr(_Paths, path)(model, str(tmp_path))
    model.optimizer.learning_rate = 0.3
    restore()
    assert float(to_numpy(model.optimizer.learning_rate)) == pytest.approx(RATE)


def _one_step_reference(model, rates):
    """The weights after one more step of `model`, each layer moved by a
    plain SGD at its own rate (0: not moved), from `model`'s weights now."""
    expected = {}
    for name, rate in rates.items():
        if rate == 0:
            expected[name] = _copy(model.get_layer(name).weights)
            continue
        reference, _, _ = _model()
        reference.set_weights(model.get_weights())
        reference.compile(keras.optimizers.SGD(RATE * rate), "mse")
        _fit(reference)
        expected[name] = _copy(reference.get_layer(name).weights)
    return expected


def _check_step(model, rates):
    expected = _one_step_reference(model, rates)
    _fit(model)
    for name, values in expected.items():
        for v, e in zip(model.get_layer(name).weights, values):
            assert_close(v, e, what=v.path)


@pytest.mark.parametrize("path", PATHS)
def test_a_restore_puts_the_saved_multipliers_in_force(path, tmp_path):
    """Checkpointed with the body frozen (0), unfrozen, then restored: the
    body is frozen again, for the device and for every reader, and the next
    `set_multipliers` on another layer keeps it so."""
    model, body, head = _model()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(RATE), {body: 0.0},
                              keep_frozen_state=True)
    model.compile(opt, "mse")
    restore = getattr(_Paths, path)(model, str(tmp_path))
    opt.set_multipliers({body: 0.5})
    assert opt.multiplier_for(body.kernel) == 0.5
    restore()

    assert [opt.multiplier_for(v) for v in model.trainable_variables] == [0, 0, 1, 1]
    lines = []
    difflr.summary(model, print_fn=lines.append, expand=True)
    assert any("body/kernel" in line and " 0 " in f" {line} " for line in lines), lines
    _check_step(model, {"body": 0.0, "head": 1.0})

    opt.set_multipliers({head: 2.0})
    assert [opt.multiplier_for(v) for v in model.trainable_variables] == [0, 0, 2, 2]
    logger = difflr.callbacks.LearningRateLogger(groups=[[body], [head]],
                                                 names=["body", "head"])
    x, y = _data()
    expected = _one_step_reference(model, {"body": 0.0, "head": 2.0})
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False,
                        verbose=0, callbacks=[logger])
    for name, values in expected.items():
        for v, e in zip(model.get_layer(name).weights, values):
            assert_close(v, e, what=v.path)
    logged = history.history
    assert logged["learning_rate/body"] == [0.0]
    assert logged["learning_rate/head"] == [pytest.approx(2 * RATE)]


# On JAX and TensorFlow the compiled step reads the vectors but not the
# host cache, and the velocity of a pause is cleared on the host when the
# change is seen (`Multipliers.refresh`): a restore that pauses a variable
# and is not followed by a read before the next step keeps the velocity.
# Restores of whole checkpoints are not affected (a paused variable's
# velocity was cleared when it paused and stays 0 at rate 0); clearing it
# in the compiled step instead is a change to `difflr/_update/compiled.py`.
@pytest.mark.parametrize("read", [
    True,
    pytest.param(False, marks=pytest.mark.xfail(
        backend() in ("jax", "tensorflow"), strict=True,
        reason="pause begun by a bare assign is seen only on a read")),
], ids=["read", "no_read"])
def test_an_assign_to_the_vectors_unfreezes_and_pauses_as_set_multipliers(read):
    """A plain `assign` to the multiplier variable (found in
    `optimizer.variables`) is in force from the next step, and a pause it
    begins clears SGD's velocity, as `set_multipliers` does (`read`: with
    `multiplier_for` read between the assign and the step)."""
    model, body, head = _model()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(RATE, momentum=0.9))
    model.compile(opt, "mse")
    _fit(model)
    _lr_vector(opt).assign(np.float32([0, 0, 1, 1]))  # body paused
    if read:
        assert opt.multiplier_for(body.kernel) == 0.0
    kept = _copy(body.weights)
    _fit(model)
    for v, k in zip(body.weights, kept):
        np.testing.assert_array_equal(to_numpy(v), k)  # no velocity left


@pytest.mark.parametrize("built", [False, True], ids=["compiled", "fitted"])
def test_a_saved_optimizer_loads_with_the_meaning_its_rules_had(built, tmp_path):
    """Every rule kind, saved before or after fitting: the loaded optimizer
    gives every variable what `resolve` gave before saving (a layer rule
    still outranks a regex; an exact path a class; ...)."""
    inputs = keras.Input((4,))
    backbone = keras.Sequential([keras.layers.Dense(5, name="b1"),
                                 keras.layers.Dense(4, name="b2")], name="backbone")
    neck = keras.layers.Dense(3, name="neck")
    head = keras.layers.Dense(2, name="head")
    model = keras.Model(inputs, head(neck(backbone(inputs))))
    lr_rules = [(backbone, 0.1), (".*bias", 2.0), ("neck/kernel", 0.3),
                (keras.layers.Dense, 0.7), (head.kernel, 0.9),
                (lambda v: 4.0 if v.path.endswith("b2/bias") else None, None)]
    decay_rules = {".*kernel": 0.5, backbone: 0.25}
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(0.01, weight_decay=0.1),
                              lr_rules, decay_multipliers=decay_rules)
    model.compile(opt, "mse")
    if built:
        _fit(model)
    expected = opt.resolve(model.trainable_variables, model)
    # Hand-computed: the backbone's layer rule wins over everything but the
    # variable rule; neck/kernel is an exact path; head's bias a regex.
    assert expected.multipliers == [0.1, 0.1, 0.1, 0.1, 0.3, 2.0, 0.9, 2.0]
    assert expected.decay_multipliers == [0.25, 0.25, 0.25, 0.25, 0.5, 1.0, 0.5, 1.0]
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    lopt = loaded.optimizer
    lopt.build(loaded.trainable_variables)
    assert [lopt.multiplier_for(v) for v in loaded.trainable_variables] == expected.multipliers
    assert ([lopt.decay_multiplier_for(v) for v in loaded.trainable_variables]
            == expected.decay_multipliers)


@pytest.mark.parametrize("built", [False, True], ids=["compiled", "fitted"])
def test_the_config_round_trips_through_a_save_as_a_plain_optimizers_does(built, tmp_path):
    """`get_config()` before saving equals the loaded optimizer's, although
    Keras renames the variables on load (`sequential/dense/kernel` ->
    `dense/kernel`); the plain optimizer is the reference."""
    configs = {}
    for kind in ("plain", "difflr"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                  keras.layers.Dense(2)])
        inner = keras.optimizers.AdamW(0.01, weight_decay=0.1)
        opt = inner if kind == "plain" else difflr.LRMultiplier(
            inner, {model.layers[0]: 0.5, ".*bias": 2.0})
        model.compile(opt, "mse")
        if built:
            _fit(model)
        before = opt.get_config()
        path = os.path.join(tmp_path, f"{kind}.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        configs[kind] = (before, loaded.optimizer.get_config())
    plain_before, plain_after = configs["plain"]
    assert plain_before == plain_after
    before, after = configs["difflr"]
    assert before == after


class _SetOnBatch(keras.callbacks.Callback):
    """At the end of batch `at`, sets the rate through an optimizer captured
    when the callback was made (not through `self.model`)."""

    def __init__(self, optimizer, at, change):
        super().__init__()
        self.optimizer, self.at, self.change = optimizer, at, change

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at:
            self.change(self.optimizer)


def test_a_captured_optimizer_serving_two_models_changes_the_one_training():
    """One optimizer, built by model A's `fit`, then compiled into model B
    (the same layers). A mid-epoch `set_multipliers` through the captured
    optimizer reaches B's running `fit` (on JAX, B's training state), as a
    plain optimizer's rate set through `self.model` does."""
    x, y = np.concatenate([_data()[0]] * 4), np.concatenate([_data()[1]] * 4)

    def run(opt, callback):
        keras.utils.set_random_seed(5)
        model_a, model_b, _ = _two_models()
        model_a.compile(opt, "mse")
        model_a.fit(x[:8], y[:8], batch_size=8, verbose=0)
        model_b.compile(opt, "mse")
        model_b.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[callback])
        return model_b

    class _Plain(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.optimizer.learning_rate = RATE / 2

    opt = difflr.LRMultiplier(keras.optimizers.SGD(RATE))
    model = run(opt, _SetOnBatch(opt, 1, lambda o: o.set_multipliers({".*": 0.5})))
    reference = run(keras.optimizers.SGD(RATE), _Plain())
    assert [opt.multiplier_for(v) for v in model.trainable_variables] == [0.5] * 4
    np.testing.assert_array_equal(
        to_numpy(opt.variables[0]), np.float32([0.5] * 4))
    for a, b in zip(model.trainable_variables, reference.trainable_variables):
        assert_close(a, b, what=a.path)


def _exclusion_run(make_optimizer, late_call):
    """Two epochs of AdamW with decay; between them (after the build)
    `late_call(optimizer)` excludes the biases from weight decay. Returns
    the weights, or the exception the call raised."""
    keras.utils.set_random_seed(9)
    model, _, _ = _model()
    opt = make_optimizer()
    model.compile(opt, "mse")
    _fit(model)
    try:
        late_call(opt)
    except ValueError as e:
        return e
    _fit(model)
    _fit(model)
    return _copy(model.trainable_variables)


def test_exclude_from_weight_decay_after_the_build_follows_the_running_keras():
    """Keras 3.15 takes `exclude_from_weight_decay` after the build (with
    effect from the next traced step; under `MirroredStrategy` it is called
    once per replica); 3.16 refuses it. The wrapper does what the running
    Keras does to a plain optimizer, with the same effect on training."""
    def exclude_twice(opt):  # as one call per replica would
        opt.exclude_from_weight_decay(var_names=["bias"])
        opt.exclude_from_weight_decay(var_names=["bias"])

    plain = _exclusion_run(lambda: keras.optimizers.AdamW(RATE, weight_decay=0.2),
                           exclude_twice)
    wrapped = _exclusion_run(lambda: difflr.LRMultiplier(
        keras.optimizers.AdamW(RATE, weight_decay=0.2)), exclude_twice)
    if isinstance(plain, ValueError):
        assert isinstance(wrapped, ValueError), "the wrapper accepted what Keras refuses"
        assert "built" in str(wrapped)
        return
    assert not isinstance(wrapped, Exception), wrapped
    for a, b in zip(wrapped, plain):
        assert_close(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_a_restored_multiplier_reads_as_it_did_when_checkpointed(path, tmp_path):
    """Checkpointed at 0.1, changed to 0.5, restored: `multiplier_for` gives
    what it gave for the same state before (0.1, as a loaded file does, not
    the float32 0.10000000149011612), and the device trains at 0.1 (the
    reference: a plain SGD at 0.1 times the rate)."""
    model, body, head = _model()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(RATE), {body: 0.1},
                              decay_multipliers={head: 0.3})
    model.compile(opt, "mse")
    restore = getattr(_Paths, path)(model, str(tmp_path))
    before = ([opt.multiplier_for(v) for v in model.trainable_variables],
              [opt.decay_multiplier_for(v) for v in model.trainable_variables])
    assert before == ([0.1, 0.1, 1.0, 1.0], [1.0, 1.0, 0.3, 0.3])
    opt.set_multipliers({body: 0.5}, decay_multipliers={head: 0.7})
    restore()
    after = ([opt.multiplier_for(v) for v in model.trainable_variables],
             [opt.decay_multiplier_for(v) for v in model.trainable_variables])
    assert after == before
    _check_step(model, {"body": 0.1, "head": 1.0})


def test_rules_given_after_a_restore_rank_as_they_would_without_it():
    """`{body: 0.1}`, a checkpoint, then the same restore with and without a
    `set_multipliers({body: 0.5})` before it: the state restored is the
    same, so a later `set_multipliers({".*bias": 2.0})` should give the same
    rates (the reference: no change before the restore, where the layer
    rule outranks the regex and body's bias stays at 0.1)."""
    rates = []
    for change_first in (False, True):
        model, body, head = _model()
        opt = difflr.LRMultiplier(keras.optimizers.SGD(RATE), {body: 0.1})
        model.compile(opt, "mse")
        restore = _Paths.set_state_tree(model, None)
        if change_first:
            opt.set_multipliers({body: 0.5})
        restore()
        opt.set_multipliers({".*bias": 2.0})
        rates.append([opt.multiplier_for(v) for v in model.trainable_variables])
    assert rates[0] == [0.1, 0.1, 1.0, 2.0]
    assert rates[1] == rates[0]


def test_a_state_unknown_to_the_optimizer_supersedes_its_rules():
    """Values this optimizer never held (a checkpoint of another run) are
    taken as a loaded file's are: rules given later apply on top, and the
    rules given before no longer count (the reference: the same optimizer
    loaded from a file with those values)."""
    model, body, head = _model()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(RATE), {body: 0.1})
    model.compile(opt, "mse")
    _fit(model)
    _lr_vector(opt).assign(np.float32([0.25, 0.25, 3.0, 3.0]))
    opt.set_multipliers({".*bias": 2.0})
    assert [opt.multiplier_for(v) for v in model.trainable_variables] == [0.25, 2.0, 3.0, 2.0]


class _AsyncReader(keras.callbacks.Callback):
    """Reads a captured optimizer's multiplier after each batch, on Keras's
    callback thread (`async_safe`)."""

    async_safe = True

    def __init__(self, optimizer, variable):
        super().__init__()
        self.optimizer, self.variable, self.read = optimizer, variable, []

    def on_train_batch_end(self, batch, logs=None):
        self.read.append(self.optimizer.multiplier_for(self.variable))


def test_an_async_callback_reads_the_multipliers_in_force():
    """On a thread that cannot reach the running JAX `fit` (whose state
    holds the optimizer's variables), a read gives the value in force, not
    the variable's initial value (it raised on JAX); on every backend what
    `set_multipliers` set before the fit."""
    x, y = np.concatenate([_data()[0]] * 4), np.concatenate([_data()[1]] * 4)
    model_a, model_b, body = _two_models()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(RATE), {body: 0.2})
    model_a.compile(opt, "mse")
    model_a.fit(x[:8], y[:8], batch_size=8, verbose=0)
    opt.set_multipliers({body: 0.3})
    model_b.compile(opt, "mse")
    reader = _AsyncReader(opt, body.kernel)
    model_b.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[reader])
    assert reader.read == [0.3] * 4
    assert opt.multiplier_for(body.kernel) == 0.3
