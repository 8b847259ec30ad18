"""The fast paths of the update, checked for the contract and for staying fast.

The contract tests (test_contract.py) cover every optimizer; these add the
cases the fast paths make special: large and tiny multipliers in the step form
(JAX, torch), a sparse write guarded while paused (TensorFlow), and what a step
executes, counted rather than timed: difflr must add a constant, not one
kernel or one fused call per variable or per multiplier.
"""

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, backend, to_numpy
from difflr import _executed
from difflr._selfcheck import OPTIMIZERS, gradients, run_reference, run_wrapped

SHAPES = [(3, 4), (4,), (2, 3), (5,), (3,)]
LR_MULTS = [50.0, 1e-4, 1.0, 3.0, 0.5]
DECAY_MULTS = [1.0, 0.0, 2.0, 0.5, 1.0]


@pytest.mark.parametrize("name", ["adam", "adam_amsgrad", "adamw", "nadam", "lion",
                                  "adadelta", "sgd", "sgd_momentum",
                                  "sgd_momentum_nesterov", "rmsprop_centered_momentum"])
def test_large_and_tiny_multipliers_match_a_copy_per_variable(name):
    make = OPTIMIZERS[name]
    grads = gradients(3, SHAPES)
    _, wrapped = run_wrapped(make, LR_MULTS, DECAY_MULTS, grads, shapes=SHAPES)
    reference = run_reference(make, LR_MULTS, DECAY_MULTS, grads, shapes=SHAPES)
    for w, r, m in zip(wrapped, reference, LR_MULTS):
        assert_close(w, r, what=f"{name}: {w.path} with multiplier {m}")


def test_a_sparse_write_is_guarded_while_paused():
    """Plain SGD subtracts `lr * IndexedSlices` from an Embedding on TensorFlow."""
    inputs = keras.Input((3,), dtype="int32")
    emb = keras.layers.Embedding(20, 4, name="emb")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(
        keras.layers.Flatten()(emb)))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(16, 3)).astype("int32")
    y = rng.normal(size=(16, 2)).astype("float32")
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1), {model.get_layer("emb"): 0.5})
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.optimizer.set_multipliers({model.get_layer("emb"): 0.0})
    start = to_numpy(model.get_layer("emb").embeddings).copy()
    head = to_numpy(model.get_layer("head").kernel).copy()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(to_numpy(model.get_layer("emb").embeddings), start)
    assert not np.allclose(to_numpy(model.get_layer("head").kernel), head)


COUNT_OPTIONS = {"layers": 6, "width": 8, "batch": 8, "optimizers": ["Adam", "AdamW", "SGD"],
                 "counts": [1, 12]}


def _mlp(layers, width):
    """An optimizer-bound model: many small Dense layers."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((width,))
    x = inputs
    for i in range(layers):
        x = keras.layers.Dense(width, activation="tanh", name=f"l{i}")(x)
    return keras.Model(inputs, x)


def _optimizer(name):
    if name == "AdamW":
        return keras.optimizers.AdamW(1e-3, weight_decay=0.01)
    if name == "SGD":
        return keras.optimizers.SGD(1e-3, momentum=0.9)
    return getattr(keras.optimizers, name)(1e-3)


@pytest.fixture(scope="module")
def counts():
    """Per optimizer, what a step executes: plain, and difflr with `k`
    distinct multipliers dealt out over the variables."""
    layers, width, batch = (COUNT_OPTIONS[k] for k in ("layers", "width", "batch"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, width)).astype("float32")
    y = rng.normal(size=(batch, width)).astype("float32")
    results = {}
    for name in COUNT_OPTIONS["optimizers"]:
        row = {}
        for k in [0] + COUNT_OPTIONS["counts"]:
            model = _mlp(layers, width)
            opt = _optimizer(name)
            if k:
                values = [0.5 ** (j / 4) for j in range(k)]
                opt = difflr.LRMultiplier(opt, [
                    (v, values[i % k]) for i, v in enumerate(model.trainable_variables)])
            model.compile(optimizer=opt, loss="mse")
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            row[f"difflr@{k}" if k else "plain"] = _executed.count(model, x, y)
        results[name] = row
    return results


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_the_wrapper_adds_a_constant_not_work_per_variable(counts, name):
    row = counts[name]
    if backend() == "jax":
        # The step form fuses into the update's kernels, and the multiplier
        # vectors, returned unchanged in the donated state, keep their
        # buffers: the plain optimizer's kernels.
        for k in COUNT_OPTIONS["counts"]:
            assert row[f"difflr@{k}"] == row["plain"], row
    elif backend() == "tensorflow":
        # The rates come split from one vector per step, which replaces the
        # plain optimizer's read of its rate per variable, and neither
        # Adam's kin nor SGD need a pause guard: fewer ops than plain.
        for k in COUNT_OPTIONS["counts"]:
            assert row[f"difflr@{k}"] - row["plain"] <= 0, row
    else:
        # Keras's own fused calls, with the rate a per-tensor scalar: the
        # same calls as the plain optimizer whatever the number of
        # multipliers (difflr's weight decay replaces Keras's own call).
        plain = row["plain"]["foreach"]
        assert row["difflr@1"]["foreach"] == plain, row
        assert row["difflr@12"]["foreach"] == plain, row


@pytest.mark.skipif(backend() != "torch", reason="the fused torch update")
def test_few_groups_of_large_tensors_take_one_call_per_group():
    """The step form's (Adamax's) extra passes cost more than one more call
    when the tensors are large and the groups few; both ways match the
    contract."""
    import torch
    from torch.profiler import profile

    shapes = [(300, 300), (300,), (300, 300), (300,)]
    lr_mults, decay_mults = [0.1, 0.1, 1.0, 1.0], [1.0] * 4
    make = OPTIMIZERS["adamax"]
    grads = gradients(2, shapes)
    opt, wrapped = run_wrapped(make, lr_mults, decay_mults, grads, shapes=shapes)
    reference = run_reference(make, lr_mults, decay_mults, grads, shapes=shapes)
    for w, r in zip(wrapped, reference):
        assert_close(w, r, what=w.path)
    step = [torch.ones_like(v.value) for v in wrapped]  # (on the variables' device)
    with profile() as prof:
        opt.apply(step, wrapped)
    fused = _executed.count_events(prof.events())["foreach"]
    plain = keras.optimizers.Adamax(0.01, weight_decay=0.05)
    plain.build(wrapped)
    with profile() as prof:
        plain.apply(step, wrapped)
    assert fused == 2 * _executed.count_events(prof.events())["foreach"] - 1  # one decay call


def test_an_eager_jax_apply_compiles_nothing_per_variable():
    """Run eagerly on JAX (a custom loop without `jit`), every op compiles
    once per shape and static argument: a slice of the multiplier vector per
    variable compiled once per index (39 compilations for 37 variables).
    The wrapper must compile a constant, not one kernel per variable."""
    if backend() != "jax":
        pytest.skip("JAX compiles each eager op; TensorFlow and torch do not")
    import jax

    compilations = []

    def record(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compilations.append(event)

    jax.monitoring.register_event_duration_secs_listener(record)

    def first_apply(count):
        vs = [keras.Variable(np.zeros((3, 5), "float32"), name=f"v{i}")
              for i in range(count)]
        opt = difflr.LRMultiplier(keras.optimizers.AdamW(1e-3, weight_decay=0.01),
                                  [(v, 1.0 + i) for i, v in enumerate(vs)])
        del compilations[:]
        opt.apply([np.ones((3, 5), "float32")] * count, vs)
        return len(compilations)

    try:
        first_apply(3)  # the ops of one update, once
        assert first_apply(37) <= 4
    finally:
        jax.monitoring.unregister_event_duration_listener(record)
