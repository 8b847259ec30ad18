"""Rule maps and groups made from a model, used on the model that
`keras.models.load_model` or `keras.models.clone_model` returns.

Resuming "with the same arguments" means with maps and groups keyed by the
old model's layers. A layer (or variable) of another model stands for its
one counterpart in the model being trained (same name, class and variable
shapes); where there is none, or several, the error says so and how to make
the map again. Each run is compared bit for bit with an uninterrupted run,
or with the same run given maps made from the model it trains.
"""

import os

import numpy as np
import pytest
import keras

import difflr
from conftest import to_numpy
from difflr.callbacks import GradualUnfreezing, LearningRateLogger

N = 32


def data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(N, 4)).astype("float32"),
            rng.normal(size=(N, 2)).astype("float32"))


def mlp(seed=3, widths=(5, 4)):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    x = inputs
    for i, width in enumerate(widths):
        x = keras.layers.Dense(width, activation="tanh", name=f"fc{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def weights(model):
    return [to_numpy(v).copy() for v in model.weights]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def _unfreezing(groups, rates):
    return GradualUnfreezing(groups, schedule=[1, 3], ramp_epochs=1,
                             multipliers=rates)


class _Logs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({k: v for k, v in logs.items() if k.startswith("learning_rate/")})


def _fit(model, groups, rates, initial_epoch, epochs):
    logs = _Logs()
    model.fit(*data(), batch_size=8, initial_epoch=initial_epoch, epochs=epochs,
              shuffle=False, verbose=0,
              callbacks=[_unfreezing(groups, rates), LearningRateLogger(groups), logs])
    return logs.rows


def test_resuming_after_load_model_with_the_old_models_arguments(tmp_path):
    # What docs/saving.md and docs/freezing.md say: a new callback with the
    # same arguments (groups and rates of the model before saving).
    model = mlp()
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.Adam(0.02)), loss="mse")
    groups = difflr.groups(model)
    rates = difflr.discriminative(groups, factor=2.0)
    uninterrupted = _fit(model, groups, rates, 0, 5)

    interrupted = mlp()
    interrupted.compile(optimizer=difflr.LRMultiplier(keras.optimizers.Adam(0.02)),
                        loss="mse")
    groups = difflr.groups(interrupted)
    rates = difflr.discriminative(groups, factor=2.0)
    _fit(interrupted, groups, rates, 0, 2)
    path = os.path.join(tmp_path, "m.keras")
    interrupted.save(path)
    loaded = keras.models.load_model(path)
    resumed = _fit(loaded, groups, rates, 2, 5)  # the old model's groups and rates

    assert resumed == uninterrupted[2:]
    assert_same(weights(loaded), weights(model))


def _compiled_clone(model, rules_from):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    source = model if rules_from == "original" else clone
    opt = difflr.LRMultiplier(
        keras.optimizers.AdamW(0.01, weight_decay=0.1),
        difflr.layerwise_decay(source, decay=0.5), difflr.no_decay(source))
    clone.compile(optimizer=opt, loss="mse")
    clone.fit(*data(), batch_size=8, epochs=2, shuffle=False, verbose=0)
    return clone, opt


def test_a_clone_trains_with_the_originals_recipe_maps():
    model = mlp()
    clone, opt = _compiled_clone(model, rules_from="original")
    reference, _ = _compiled_clone(model, rules_from="clone")
    assert [opt.multiplier_for(v) for v in clone.trainable_variables] == \
        [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    assert [opt.decay_multiplier_for(v) for v in clone.trainable_variables] == \
        [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert_same(weights(clone), weights(reference))


def _loaded_and_recompiled(path, rules):
    loaded = keras.models.load_model(path)
    opt = difflr.LRMultiplier(keras.optimizers.Adam(0.01), rules(loaded))
    loaded.compile(optimizer=opt, loss="mse")
    loaded.fit(*data(), batch_size=8, epochs=2, shuffle=False, verbose=0)
    return loaded, opt


def test_a_loaded_model_recompiled_with_the_old_models_map(tmp_path):
    model = mlp()
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    old_rules = difflr.layerwise_decay(model, decay=0.5)
    loaded, opt = _loaded_and_recompiled(path, lambda _: old_rules)
    reference, _ = _loaded_and_recompiled(
        path, lambda m: difflr.layerwise_decay(m, decay=0.5))
    assert [opt.multiplier_for(v) for v in loaded.trainable_variables] == \
        [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    assert_same(weights(loaded), weights(reference))


@pytest.mark.parametrize("make", ["functional", "sequential"])
def test_a_variable_of_the_old_model_stands_for_its_counterpart(make):
    if make == "functional":
        model = mlp()
    else:
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="fc0"),
                                  keras.layers.Dense(2, name="head")])
    clone = keras.models.clone_model(model)
    opt = difflr.LRMultiplier("sgd", [(model.get_layer("fc0").kernel, 0.3),
                                      (model.get_layer("head").bias, 2.0)])
    clone.compile(optimizer=opt, loss="mse")
    opt.build(clone.trainable_variables)
    expected = {"fc0/kernel": 0.3, "head/bias": 2.0}
    for v in clone.trainable_variables:
        name = "/".join(v.path.split("/")[-2:])
        assert opt.multiplier_for(v) == expected.get(name, 1.0), v.path


def test_a_layer_of_another_model_with_no_counterpart_names_the_cause():
    old = mlp()
    other = mlp(widths=(5, 6))  # fc1 is 6 wide here: not the same layer
    rules = difflr.layerwise_decay(old, decay=0.5)
    other.compile(optimizer=difflr.LRMultiplier("sgd", rules), loss="mse")
    cause = (r"layer 'fc1' \(Dense\) matches no trainable variable: it is a "
             r"layer of another model than the one "
             r"being trained, such as the model before `keras.models.load_model` "
             r"or `keras.models.clone_model`, and 'functional(_\d+)?' has no layer "
             r"named 'fc1' of class Dense with those variable shapes .*"
             r"`difflr.layerwise_decay\(model\)`.*`model.get_layer\('fc1'\)`")
    with pytest.raises(ValueError, match=cause):
        other.fit(*data(), verbose=0)
    other.compile(optimizer=difflr.LRMultiplier("sgd"), loss="mse")
    with pytest.raises(ValueError, match=r"GradualUnfreezing: layer 'fc1' in group 1 "
                       r"has the variable 'fc1/kernel', which is not a trainable "
                       r"variable of the model 'functional(_\d+)?': the layer is a "
                       r"layer of another model .*`difflr.groups\(model\)`"):
        other.fit(*data(), verbose=0,
                  callbacks=[GradualUnfreezing(difflr.groups(old), every=1)])


def test_a_layer_of_another_model_with_two_counterparts_names_the_cause():
    def twin_blocks():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((4,))
        blocks = [keras.Sequential([keras.layers.Dense(4, name="fc")], name=f"block{i}")
                  for i in range(2)]
        return keras.Model(inputs, blocks[1](blocks[0](inputs)))

    old, new = twin_blocks(), twin_blocks()
    fc = old.get_layer("block0").get_layer("fc")
    new.compile(optimizer=difflr.LRMultiplier("sgd", {fc: 0.1}), loss="mse")
    with pytest.raises(ValueError, match=r"has 2 of them .* so which one it stands "
                       r"for is ambiguous"):
        new.fit(*data()[:1], np.zeros((N, 4), "float32"), verbose=0)
    # The block itself is unique: it stands for its counterpart.
    opt = difflr.LRMultiplier("sgd", {old.get_layer("block0"): 0.1})
    new.compile(optimizer=opt, loss="mse")
    opt.build(new.trainable_variables)
    assert [opt.multiplier_for(v) for v in new.trainable_variables] == \
        [0.1, 0.1, 1.0, 1.0]
