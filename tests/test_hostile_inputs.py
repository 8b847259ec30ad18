"""Odd models and hostile inputs: each gets the right rates or a clear error.

The fit-level cases compare one step of `model.fit` under `LRMultiplier`
with one step of the same model under the plain optimizer, from the same
weights on the same batch. For SGD and for Adam's first step the update is
linear in the learning rate, so every variable must move by exactly its
multiplier times the plain update: an independent reference that needs no
hand-written gradient.
"""

import json

import numpy as np
import pytest
import keras
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import difflr
from conftest import assert_close, backend, to_numpy
from difflr._selfcheck import OPTIMIZERS, gradients, run_reference, run_wrapped, variables

L = keras.layers


def _batch(seed=0, n=8, d=4, out=2):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype("float32"),
            rng.normal(size=(n, out)).astype("float32"))


def _one_step(build, optimizer, x, y):
    """The model and the change of each trainable variable after one step."""
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(optimizer=optimizer(model), loss="mse")
    if not model.built:
        model.build(x.shape)
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return model, [to_numpy(v) - b for v, b in zip(model.trainable_variables, before)]


def _check_scaled(build, rules, expected, x, y, base=lambda: keras.optimizers.SGD(0.1),
                  rtol=1e-5, atol=1e-7):
    """One wrapped step moves each variable by its multiplier x the plain step.

    `rules(model)` builds the rule map; `expected` maps variable paths to the
    multiplier they must get (absent paths: 1.0).
    """
    _, plain = _one_step(build, lambda m: base(), x, y)
    model, wrapped = _one_step(
        build, lambda m: difflr.LRMultiplier(base(), rules(m)), x, y)
    assert len(plain) == len(wrapped) == len(model.trainable_variables)
    for v, p, w in zip(model.trainable_variables, plain, wrapped):
        m = expected.get(v.path, 1.0)
        assert model.optimizer.multiplier_for(v) == m, v.path
        np.testing.assert_allclose(w, m * p, rtol=rtol, atol=atol, err_msg=v.path)
    return model


def test_a_layer_shared_twice_is_one_set_of_variables_at_one_rate():
    def build():
        inputs = keras.Input((4,))
        shared = L.Dense(4, activation="tanh", name="shared")
        return keras.Model(inputs, L.Dense(2, name="head")(shared(shared(inputs))))

    x, y = _batch()
    _check_scaled(build, lambda m: {m.get_layer("shared"): 0.1, "head/bias": 3.0},
                  {"shared/kernel": 0.1, "shared/bias": 0.1, "head/bias": 3.0}, x, y)


def _twin_submodels():
    def tower(name):
        inputs = keras.Input((4,))
        return keras.Model(inputs, L.Dense(3, name="dense")(inputs), name=name)

    inputs = keras.Input((4,))
    a, b = tower("a"), tower("b")
    merged = L.Concatenate()([a(inputs), b(inputs)])
    return keras.Model(inputs, L.Dense(2, name="head")(merged))


def test_submodels_with_equal_variable_paths_are_told_apart_by_object():
    x, y = _batch()
    keras.utils.set_random_seed(0)
    probe = _twin_submodels()
    paths = [v.path for v in probe.trainable_variables]
    assert paths.count("dense/kernel") == 2  # the trap: equal paths
    _, plain = _one_step(_twin_submodels, lambda m: keras.optimizers.SGD(0.1), x, y)
    model, wrapped = _one_step(
        _twin_submodels,
        lambda m: difflr.LRMultiplier(keras.optimizers.SGD(0.1),
                                      {m.get_layer("a"): 0.1, m.get_layer("b"): 2.0}), x, y)
    owner = {id(v): 0.1 for v in model.get_layer("a").trainable_variables}
    owner.update({id(v): 2.0 for v in model.get_layer("b").trainable_variables})
    for v, p, w in zip(model.trainable_variables, plain, wrapped):
        m = owner.get(id(v), 1.0)
        assert model.optimizer.multiplier_for(v) == m
        np.testing.assert_allclose(w, m * p, rtol=1e-5, atol=1e-7, err_msg=v.path)
    # The same paths as strings are ambiguous: an error, not a coin toss.
    with pytest.raises(ValueError, match="names 2 variables with that same path"):
        _one_step(_twin_submodels,
                  lambda m: difflr.LRMultiplier("sgd", {"dense/kernel": 0.1}), x, y)


def test_non_trainable_variables_and_frozen_layers_are_left_to_keras():
    def build():
        inputs = keras.Input((4,))
        frozen = L.Dense(4, name="frozen", trainable=False)
        h = L.BatchNormalization(name="bn")(frozen(inputs))
        return keras.Model(inputs, L.Dense(2, name="head")(h))

    x, y = _batch()
    model = _check_scaled(
        build, lambda m: {keras.layers.BatchNormalization: 0.5, "head/kernel": 2.0},
        {"bn/gamma": 0.5, "bn/beta": 0.5, "head/kernel": 2.0}, x, y)
    assert [v.path for v in model.trainable_variables] == [
        "bn/gamma", "bn/beta", "head/kernel", "head/bias"]
    # A rule on the frozen layer is an error that says why.
    with pytest.raises(ValueError, match="frozen.*trainable"):
        _one_step(build, lambda m: difflr.LRMultiplier("sgd", {m.get_layer("frozen"): 0.1}),
                  x, y)


def test_a_lazily_built_model_resolves_rules_when_fit_builds_it():
    def build():
        return keras.Sequential([L.Dense(4, activation="relu", name="body"),
                                 L.Dense(2, name="head")])

    x, y = _batch()
    made = []

    def rules(model):
        assert not model.built and not model.trainable_variables  # no variables yet
        made.append(model)
        return {model.layers[0]: 0.25}

    keras.utils.set_random_seed(0)
    _, plain = _one_step(build, lambda m: keras.optimizers.SGD(0.1), x, y)
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.SGD(0.1), rules(model)),
                  loss="mse")
    # Build the model (creating its variables) only now, after compile.
    model.build(x.shape)
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for v, b, p, m in zip(model.trainable_variables, before, plain, [0.25, 0.25, 1, 1]):
        np.testing.assert_allclose(to_numpy(v) - b, m * p, rtol=1e-5, atol=1e-7)


class _WithUnusedWeight(L.Layer):
    """A layer with a weight its output does not depend on: its gradient is None."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 2), name="kernel")
        self.unused = self.add_weight(shape=(3,), name="unused")

    def call(self, x):
        return x @ self.kernel


def test_variables_without_a_gradient_are_skipped_like_keras_does():
    def build():
        inputs = keras.Input((4,))
        return keras.Model(inputs, _WithUnusedWeight(name="odd")(inputs))

    x, y = _batch()
    # JAX differentiates the unused weight to zeros; TensorFlow and torch give
    # None, which Keras drops with a warning. Either way it must not move.
    model = _check_scaled(build, lambda m: {"odd/kernel": 0.3, "odd/unused": 5.0},
                          {"odd/kernel": 0.3, "odd/unused": 5.0}, x, y)
    assert model.get_layer("odd").unused.path == "odd/unused"


@pytest.mark.parametrize("name", ["sgd_momentum_nesterov", "adamw", "nadam"])
def test_a_none_gradient_is_dropped_and_the_others_still_match(name):
    make = OPTIMIZERS[name]
    shapes = [(3, 4), (4,), (2,)]
    grads = gradients(3, shapes)
    vs, start = variables(shapes), variables(shapes)
    opt = difflr.LRMultiplier(make(0.01, weight_decay=0.05),
                              [(vs[0], 0.5), (vs[1], 2.0), (vs[2], 3.0)])
    for step in grads:
        with pytest.warns(UserWarning, match="[Gg]radients do not exist.*v1"):
            opt.apply([keras.ops.convert_to_tensor(step[0]), None,
                       keras.ops.convert_to_tensor(step[2])], vs)
    reference = run_reference(make, [0.5, 2.0, 3.0], [1.0] * 3, grads, shapes=shapes)
    assert_close(vs[0], reference[0], what="v0")
    assert_close(vs[2], reference[2], what="v2")
    np.testing.assert_array_equal(to_numpy(vs[1]), to_numpy(start[1]))
    assert int(to_numpy(opt.iterations)) == 3


def _embedding_model():
    inputs = keras.Input((3,), dtype="int32")
    emb = L.Embedding(20, 4, name="emb")(inputs)
    return keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(emb)))


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_sparse_embedding_gradients_are_scaled(opt):
    """On TensorFlow an Embedding's gradient is `tf.IndexedSlices`."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(8, 3)).astype("int32")
    y = rng.normal(size=(8, 2)).astype("float32")
    _check_scaled(_embedding_model, lambda m: {"emb/.*": 0.5, "head/kernel": 2.0},
                  {"emb/embeddings": 0.5, "head/kernel": 2.0}, x, y,
                  base=lambda: keras.optimizers.get(opt))


def test_a_frozen_sparse_embedding_never_moves_under_momentum():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(16, 3)).astype("int32")
    y = rng.normal(size=(16, 2)).astype("float32")
    model = _embedding_model()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1, momentum=0.9),
                              {model.get_layer("emb"): 1.0}, keep_frozen_state=True)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.optimizer.set_multipliers({model.get_layer("emb"): 0.0})
    start = to_numpy(model.get_layer("emb").embeddings).copy()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_array_equal(to_numpy(model.get_layer("emb").embeddings), start)


def test_mixed_bfloat16_fit_scales_each_variable():
    keras.config.set_dtype_policy("mixed_bfloat16")

    def build():
        inputs = keras.Input((4,))
        h = L.Dense(4, activation="tanh", name="body")(inputs)
        return keras.Model(inputs, L.Dense(2, name="head", dtype="float32")(h))

    x, y = _batch()
    _check_scaled(build, lambda m: {m.get_layer("body"): 0.1},
                  {"body/kernel": 0.1, "body/bias": 0.1}, x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["sgd_momentum_nesterov", "adamw"])
def test_low_precision_variables_match_a_copy_per_variable(dtype, name):
    """Variables stored in float16/bfloat16 (a `"bfloat16"` policy)."""
    make = OPTIMIZERS[name]
    shapes = [(3, 4), (4,)]
    grads = [[g.astype(dtype) for g in step] for step in gradients(3, shapes)]
    mults, decays = [0.5, 2.0], [1.0, 0.0]
    _, wrapped = run_wrapped(make, mults, decays, grads, shapes=shapes, dtype=dtype)
    reference = run_reference(make, mults, decays, grads, shapes=shapes, dtype=dtype)
    for w, r in zip(wrapped, reference):
        assert w.dtype == dtype
        assert_close(keras.ops.cast(w, "float32"), keras.ops.cast(r, "float32"),
                     rtol=2e-2, atol=2e-3, what=f"{dtype} {name}: {w.path}")


def test_a_rule_map_loaded_from_json_works_and_bad_values_name_the_rule():
    def build():
        inputs = keras.Input((4,))
        h = L.Dense(4, activation="tanh", name="body")(inputs)
        return keras.Model(inputs, L.Dense(2, name="head")(h))

    rules = json.loads('{"body/.*": 0.1, "head/bias": 2}')
    x, y = _batch()
    _check_scaled(build, lambda m: rules,
                  {"body/kernel": 0.1, "body/bias": 0.1, "head/bias": 2.0}, x, y)
    with pytest.raises(TypeError, match="rule 'body/.*'.*received '0.1' of type str"):
        difflr.LRMultiplier("sgd", json.loads('{"body/.*": "0.1"}'))
    with pytest.raises(TypeError, match="received None"):
        difflr.LRMultiplier("sgd", json.loads('{"body/.*": null}'))


# Property-based: random rule maps over random multipliers satisfy the
# per-copy contract, with the precedence variable > exact path > regex >
# default worked out independently here.

_PROPERTY_OPTIMIZERS = ["sgd_momentum_nesterov", "adamw", "nadam", "lion", "adagrad", "ftrl"]
_SHAPES = [(3, 2), (2,), (4,), (2, 2)]
_multiplier = st.one_of(st.just(0.0), st.floats(1e-3, 10.0, allow_nan=False))
_how = st.sampled_from(["default", "variable", "path", "regex"])


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(_PROPERTY_OPTIMIZERS),
       catch_all=st.one_of(st.none(), _multiplier),
       hows=st.lists(_how, min_size=len(_SHAPES), max_size=len(_SHAPES)),
       values=st.lists(_multiplier, min_size=len(_SHAPES), max_size=len(_SHAPES)))
def test_random_rule_maps_satisfy_the_per_copy_contract(name, catch_all, hows, values):
    vs = variables(_SHAPES)
    expected = []
    rules = [] if catch_all is None else [(".*", catch_all)]  # a regex over all
    for v, how, value in zip(vs, hows, values):
        if how == "default":
            expected.append(1.0 if catch_all is None else catch_all)
            continue
        key = {"variable": v, "path": v.path, "regex": "(?:" + v.path + ")"}[how]
        if how == "regex" and catch_all is not None:
            # Two regexes of one rank on one variable: must agree or raise.
            value = catch_all
        rules.append((key, value))
        expected.append(value)
    assume(any(m != 0 for m in expected))
    make = OPTIMIZERS[name]
    grads = gradients(3, _SHAPES, seed=len(rules))
    opt = difflr.LRMultiplier(make(0.01, weight_decay=0.05), rules)
    for step in grads:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step], vs)
    assert [opt.multiplier_for(v) for v in vs] == pytest.approx(expected, rel=0, abs=0)
    # Reference: a plain optimizer per moving variable at lr * m; a variable
    # at 0 must not have moved at all.
    reference = run_reference(make, [m or 1.0 for m in expected], [1.0] * len(vs), grads,
                              shapes=_SHAPES, wd=0.05)
    start = variables(_SHAPES)
    for v, r, s, m in zip(vs, reference, start, expected):
        if m == 0:
            np.testing.assert_array_equal(to_numpy(v), to_numpy(s), err_msg=v.path)
        else:
            assert_close(v, r, what=f"{name}: {v.path} at {m}")


def test_disagreeing_regexes_of_one_rank_raise():
    vs = variables(_SHAPES)
    opt = difflr.LRMultiplier("sgd", [(".*", 0.5), ("(?:v0)", 2.0)])
    with pytest.raises(ValueError, match="Two regex rules disagree on variable 'v0'"):
        opt.build(vs)
