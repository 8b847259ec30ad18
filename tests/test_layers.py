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
