"""difflr.layers: the article's layer arguments, Keras style."""

import gc

import numpy as np
import pytest
import keras

import difflr
from conftest import to_numpy


@pytest.mark.filterwarnings("error:.*not a difflr.LRMultiplier")
def test_the_article_usage_runs_as_written():
    inputs = keras.Input((8, 8, 3))
    x = difflr.layers.Conv2D(filters=16, kernel_size=[2, 2], strides=[1, 1], padding='same',
                             W_learning_rate_multiplier=0.0001, b_learning_rate_multiplier=0.0001)(inputs)
    x = keras.layers.Flatten()(x)
    x = difflr.layers.Dense(1024, activation='relu', W_learning_rate_multiplier=0.1, b_learning_rate_multiplier=0.1)(x)
    outputs = keras.layers.Dense(1, name="head")(x)
    model = keras.Model(inputs, outputs)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.01))  # no rule map at all
    model.compile(optimizer=opt, loss="mse")
    rng = np.random.default_rng(0)
    x_data = rng.random((4, 8, 8, 3)).astype("float32")
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    model.fit(x_data, np.ones((4, 1), "float32"), epochs=1, verbose=0)
    assert [opt.multiplier_for(v) for v in model.trainable_variables] == \
        [0.0001, 0.0001, 0.1, 0.1, 1.0, 1.0]
    # Plain SGD moves each variable by lr * m * gradient: the conv kernel's
    # step is 1000x smaller relative to the dense one's than its gradient's.
    steps = [np.abs(to_numpy(v) - b).max() for v, b in zip(model.trainable_variables, before)]
    assert 0 < steps[0] < steps[2]


@pytest.mark.parametrize("name", ["Dense", "Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose",
                                  "DepthwiseConv2D", "SeparableConv2D", "EinsumDense"])
def test_each_layer_declares_and_round_trips_its_config(name):
    cls = getattr(difflr.layers, name)
    args = {"Dense": dict(units=3), "EinsumDense": dict(equation="ab,bc->ac", output_shape=3, bias_axes="c"),
            "DepthwiseConv2D": dict(kernel_size=2), "SeparableConv2D": dict(filters=3, kernel_size=2),
            }.get(name, dict(filters=3, kernel_size=2))
    shape = {"Dense": (4,), "EinsumDense": (4,), "Conv1D": (6, 2), "Conv3D": (4, 4, 4, 2)}.get(name, (5, 5, 2))
    layer = cls(**args, kernel_lr_multiplier=0.3, bias_lr_multiplier=2.0, kernel_decay_multiplier=0.5)
    assert isinstance(layer, getattr(keras.layers, name))
    model = keras.Sequential([keras.Input(shape), layer])
    config = layer.get_config()
    assert config["kernel_lr_multiplier"] == 0.3 and config["bias_lr_multiplier"] == 2.0
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is cls and clone.kernel_decay_multiplier == 0.5
    opt = difflr.LRMultiplier("adam")
    model.compile(optimizer=opt, loss="mse")
    opt.build(model.trainable_variables)
    bias = layer.bias
    for v in model.trainable_variables:
        assert opt.multiplier_for(v) == (2.0 if v is bias else 0.3)
        assert opt.decay_multiplier_for(v) == (1.0 if v is bias else 0.5)


def test_an_explicit_rule_wins_over_a_declaration():
    layer = difflr.layers.Dense(2, kernel_lr_multiplier=0.1, name="d")
    model = keras.Sequential([keras.Input((3,)), layer])
    opt = difflr.LRMultiplier("adam", {".*kernel": 5.0})
    model.compile(optimizer=opt, loss="mse")
    opt.build(model.trainable_variables)
    assert opt.multiplier_for(layer.kernel) == 5.0


def test_bad_declarations_raise():
    with pytest.raises(ValueError, match="non-negative finite"):
        difflr.layers.Dense(2, kernel_lr_multiplier=-1)
    with pytest.raises(TypeError, match="non-negative finite"):
        difflr.layers.Dense(2, bias_lr_multiplier="fast")
    with pytest.raises(ValueError, match="give only one"):
        difflr.layers.Dense(2, kernel_lr_multiplier=0.1, W_learning_rate_multiplier=0.2)


def test_training_under_a_plain_optimizer_warns_instead_of_ignoring_silently():
    gc.collect()  # unbuilt LRMultipliers left by earlier tests postpone the check
    assert not difflr._declarations.any_pending()
    layer = difflr.layers.Dense(2, kernel_lr_multiplier=0.1)
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile(optimizer="adam", loss="mse")
    with pytest.warns(UserWarning, match="not a difflr.LRMultiplier"):
        model.fit(np.ones((2, 3), "float32"), np.ones((2, 2), "float32"), verbose=0)


def test_saved_model_with_declaring_layers_loads(tmp_path):
    layer = difflr.layers.Dense(2, kernel_lr_multiplier=0.1)
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile(optimizer=difflr.LRMultiplier("adam"), loss="mse")
    model.fit(np.ones((2, 3), "float32"), np.ones((2, 2), "float32"), verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[0]) is difflr.layers.Dense
    assert loaded.optimizer.multiplier_for(loaded.layers[0].kernel) == 0.1


# Declarations belong to the layer: a layer built frozen (Keras's transfer
# learning guide: freeze the base, train the head, unfreeze, recompile), or
# loaded from a file saved frozen, trains at its declaration once unfrozen.

N = 8
KERNEL_M, BIAS_M = 0.1, 3.0


def _two_stage_model():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4,))
    base = difflr.layers.Dense(3, kernel_lr_multiplier=KERNEL_M,
                               bias_lr_multiplier=BIAS_M, name="base")
    base.trainable = False  # built frozen
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(base(inputs)))
    return model, base


def _two_stage_data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(N, 4)).astype("float32"),
            rng.normal(size=(N, 2)).astype("float32"))


def _sgd_by_hand(params, x, y, steps, rates, momentum=0.9):
    """Keras SGD with momentum, one optimizer copy per variable at its own
    rate, on the linear `base -> head` model with the mean squared error,
    full batches, in float64. `rates` are base kernel, base bias, head
    kernel, head bias (0: not trained). A fresh optimizer: no velocity."""
    params = [p.astype("float64") for p in params]
    velocity = [np.zeros_like(p) for p in params]
    for _ in range(steps):
        w0, b0, w1, b1 = params
        h = x @ w0 + b0
        d_out = 2 * (h @ w1 + b1 - y) / y.size
        d_h = d_out @ w1.T
        grads = [x.T @ d_h, d_h.sum(0), h.T @ d_out, d_out.sum(0)]
        for i, (g, rate) in enumerate(zip(grads, rates)):
            if rate:
                velocity[i] = momentum * velocity[i] - rate * g
                params[i] = params[i] + velocity[i]
    return params


def _stage_two(model, x, y, lr):
    model.get_layer("base").trainable = True
    opt = difflr.LRMultiplier(keras.optimizers.SGD(lr, momentum=0.9))
    model.compile(optimizer=opt, loss="mse")  # recompile, as the guide says
    model.fit(x, y, batch_size=N, epochs=3, shuffle=False, verbose=0)
    return opt


def _expected_after_both_stages(initial, x, y):
    stage_one = _sgd_by_hand(initial, x, y, steps=2, rates=[0, 0, 0.05, 0.05])
    return _sgd_by_hand(stage_one, x, y, steps=3,
                        rates=[0.02 * KERNEL_M, 0.02 * BIAS_M, 0.02, 0.02])


def _fit_stage_one(model, x, y):
    model.compile(optimizer=difflr.LRMultiplier(
        keras.optimizers.SGD(0.05, momentum=0.9)), loss="mse")
    model.fit(x, y, batch_size=N, epochs=2, shuffle=False, verbose=0)


def _check_stage_two(model, x, y, initial):
    """Stage two trains at the declared rates: the multipliers, and the
    weights against the hand-computed reference."""
    opt = _stage_two(model, x, y, lr=0.02)
    assert [opt.multiplier_for(v) for v in model.trainable_variables] == \
        [KERNEL_M, BIAS_M, 1.0, 1.0]
    for v, expected in zip(model.trainable_variables,
                           _expected_after_both_stages(initial, x, y)):
        np.testing.assert_allclose(to_numpy(v), expected, rtol=1e-5, atol=1e-6,
                                   err_msg=v.path)


def test_a_layer_built_frozen_trains_at_its_declaration_once_unfrozen():
    x, y = _two_stage_data()
    model, base = _two_stage_model()
    assert not base.trainable_variables  # built while trainable=False
    initial = [to_numpy(v).copy() for v in model.weights]
    _fit_stage_one(model, x, y)
    _check_stage_two(model, x, y, initial)


def test_a_layer_saved_frozen_trains_at_its_declaration_after_load(tmp_path):
    x, y = _two_stage_data()
    model, _ = _two_stage_model()
    initial = [to_numpy(v).copy() for v in model.weights]
    _fit_stage_one(model, x, y)
    path = str(tmp_path / "stage1.keras")
    model.save(path)  # saved frozen
    loaded = keras.models.load_model(path)
    assert not loaded.get_layer("base").trainable
    _check_stage_two(loaded, x, y, initial)


def test_a_clone_of_a_frozen_layer_declares_once_unfrozen():
    model, _ = _two_stage_model()
    clone = keras.models.clone_model(model)  # its base is built frozen too
    clone.get_layer("base").trainable = True
    opt = difflr.LRMultiplier("sgd")
    clone.compile(optimizer=opt, loss="mse")
    opt.build(clone.trainable_variables)
    assert [opt.multiplier_for(v) for v in clone.trainable_variables] == \
        [KERNEL_M, BIAS_M, 1.0, 1.0]


@pytest.mark.parametrize("name", ["Dense", "EinsumDense"])
def test_lora_factors_get_the_kernel_declaration(name):
    cls = getattr(difflr.layers, name)
    args = (dict(units=3) if name == "Dense" else
            dict(equation="ab,bc->ac", output_shape=3, bias_axes="c"))
    layer = cls(**args, kernel_lr_multiplier=0.1, bias_lr_multiplier=2.0,
                kernel_decay_multiplier=0.5, name="body")
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(1, name="head")])
    layer.enable_lora(2)  # after build: the factors are new variables
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(1e-3, weight_decay=0.01))
    model.compile(optimizer=opt, loss="mse")
    opt.build(model.trainable_variables)
    got = {v.name: (opt.multiplier_for(v), opt.decay_multiplier_for(v))
           for v in layer.trainable_variables}
    assert got == {"bias": (2.0, 1.0), "lora_kernel_a": (0.1, 0.5),
                   "lora_kernel_b": (0.1, 0.5)}
