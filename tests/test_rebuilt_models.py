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
from conftest import keras_hub_or_skip, to_numpy
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


# Every recipe made from the model before `load_model` / `clone_model`, used
# on the rebuilt model: the multipliers of a hand table, and training bit for
# bit as with the maps made from the rebuilt model itself.

def sequential(lora=False):
    # A Sequential: Keras 3.15 drops its scope from the paths on load
    # (`sequential/fc0/bias` -> `fc0/bias`), which `no_decay`'s keys hold.
    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(5, name="fc0"),
        keras.layers.LayerNormalization(name="norm"),
        keras.layers.Dense(4, activation="tanh", name="fc1"),
        keras.layers.Dense(2, name="head")])
    if lora:
        for name in ("fc0", "fc1"):
            model.get_layer(name).enable_lora(2, b_initializer="glorot_uniform")
    return model


def rebuilt(model, how, path):
    if how == "load_model":
        if not os.path.exists(path):
            model.save(path)
        return keras.models.load_model(path)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


# Groups [fc0, norm], [fc1], [head]. Trainable variables: fc0 kernel, bias,
# norm gamma, beta, fc1 kernel, bias, head kernel, bias; with LoRA on fc0
# and fc1 their kernels give way to lora_kernel_a, lora_kernel_b (frozen).
RECIPES = {
    "discriminative": (
        False, lambda m: (difflr.discriminative(m, factor=4.0), None),
        [1 / 16] * 4 + [1 / 4] * 2 + [1.0] * 2, [1.0] * 8),
    "layerwise_decay": (
        False, lambda m: (difflr.layerwise_decay(m, decay=0.5), None),
        [0.25] * 4 + [0.5] * 2 + [1.0] * 2, [1.0] * 8),
    "no_decay": (
        False, lambda m: (None, difflr.no_decay(m)),
        [1.0] * 8, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]),
    "lora_plus": (
        True, lambda m: (difflr.lora_plus(m, base=difflr.layerwise_decay(m, decay=0.5)),
                         difflr.no_decay(m)),
        # fc0: bias, A, B; norm: gamma, beta; fc1: bias, A, B; head
        [0.25, 0.25, 4.0, 0.25, 0.25, 0.5, 0.5, 8.0, 1.0, 1.0],
        [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]),
}


def _trained(model, maps):
    lr_rules, decay_rules = maps
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(0.01, weight_decay=0.1),
                              lr_rules, decay_rules)
    model.compile(optimizer=opt, loss="mse")
    model.fit(*data(), batch_size=8, epochs=1, shuffle=False, verbose=0)
    return opt


@pytest.mark.parametrize("how", ["load_model", "clone_model"])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_recipe_made_from_the_old_model_trains_the_rebuilt_one(recipe, how, tmp_path):
    lora, make, lr_table, decay_table = RECIPES[recipe]
    old = sequential(lora)
    path = os.path.join(tmp_path, "m.keras")
    new, reference = rebuilt(old, how, path), rebuilt(old, how, path)
    opt = _trained(new, make(old))
    _trained(reference, make(reference))
    assert [opt.multiplier_for(v) for v in new.trainable_variables] == lr_table
    assert [opt.decay_multiplier_for(v) for v in new.trainable_variables] == decay_table
    assert_same(weights(new), weights(reference))


@pytest.mark.parametrize("how", ["load_model", "clone_model"])
def test_fine_tune_with_the_old_models_groups(how, tmp_path):
    old = sequential()
    path = os.path.join(tmp_path, "m.keras")
    runs = []
    for groups_of in ("old", "own"):
        model = rebuilt(old, how, path)
        model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.Adam()), loss="mse")
        groups = difflr.groups(old if groups_of == "old" else model)
        difflr.fine_tune(model, *data(), epochs=1, groups=groups, batch_size=8,
                         shuffle=False, verbose=0)
        runs.append(model)
    # Phase 2: discriminative over lr_mult=100 for three groups.
    assert [runs[0].optimizer.multiplier_for(v) for v in runs[0].trainable_variables] \
        == pytest.approx([0.01] * 4 + [0.1] * 2 + [1.0] * 2, rel=1e-12)
    assert_same(weights(runs[0]), weights(runs[1]))


def test_a_path_of_the_old_model_stands_for_its_one_renamed_counterpart(tmp_path):
    # Saved compiled, not fitted, with string rules only: the rules
    # themselves are saved, and resolve on the loaded model (in load_model),
    # whose paths Keras 3.15 renamed.
    old = sequential()
    path_of = {name: old.get_layer(name).bias.path for name in ("fc0", "fc1", "head")}
    old.compile(optimizer=difflr.LRMultiplier(
        keras.optimizers.AdamW(0.01, weight_decay=0.1), {path_of["fc1"]: 0.5},
        {path_of["fc0"]: 0.0, path_of["head"]: 0.0}), loss="mse")
    path = os.path.join(tmp_path, "m.keras")
    old.save(path)
    loaded = keras.models.load_model(path)
    loaded.fit(*data(), batch_size=8, epochs=1, shuffle=False, verbose=0)
    opt = loaded.optimizer
    assert [opt.multiplier_for(v) for v in loaded.trainable_variables] == \
        [1.0] * 5 + [0.5] + [1.0] * 2
    assert [opt.decay_multiplier_for(v) for v in loaded.trainable_variables] == \
        [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_a_path_with_several_renamed_counterparts_names_the_cause():
    def twin_blocks():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((4,))
        blocks = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="fc")],
                  name=f"block{i}") for i in range(2)]
        return keras.Model(inputs, blocks[1](blocks[0](inputs)))

    # As a path of the blocks loaded by Keras 3.15 (`fc/bias`, twice) would
    # be on the model before: which block's is ambiguous.
    model = twin_blocks()
    opt = difflr.LRMultiplier("sgd", {"fc/bias": 0.5})
    with pytest.raises(ValueError, match=r"rule 'fc/bias' is no path of the "
                       r"model being trained; .* 2 variables end like it "
                       r"\('block0/fc/bias', 'block1/fc/bias'\), so which one it "
                       r"stands for is ambiguous"):
        opt.build(model.trainable_variables)
    # One of them: it stands for it.
    opt = difflr.LRMultiplier("sgd", {"fc/bias": 0.5})
    opt.build(model.get_layer("block1").trainable_variables)
    assert opt.multiplier_for(model.get_layer("block1").get_layer("fc").bias) == 0.5


def test_lora_plus_of_a_model_whose_lora_the_other_lacks_names_the_cause():
    old = sequential(lora=True)
    rules = difflr.lora_plus(old, base=difflr.layerwise_decay(old, decay=0.5))
    new = sequential()  # no LoRA: not the same structure
    new.compile(optimizer=difflr.LRMultiplier("sgd", rules), loss="mse")
    with pytest.raises(ValueError, match=r"difflr.lora_plus: the model 'sequential(_\d+)?' "
                       r"it was made with is a layer of another model than the one being "
                       r"trained, .* has no layer named 'sequential(_\d+)?' of class "
                       r"Sequential with those variable shapes"):
        new.fit(*data(), verbose=0)


def _bert_classifier(keras_hub):
    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=8, dropout=0.0)  # runs alike
    inputs = {name: keras.Input((8,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    head = keras.layers.Dense(2, name="head")
    return keras.Model(inputs, head(backbone(inputs)["pooled_output"]))


def _bert_data():
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 50, (8, 8)).astype("int32"),
         "segment_ids": np.zeros((8, 8), "int32"),
         "padding_mask": np.ones((8, 8), "int32")}
    return x, rng.normal(size=(8, 2)).astype("float32")


def _bert_lora_plus(model):
    return difflr.lora_plus(model, base=difflr.layerwise_decay(model, decay=0.5))


def _bert_resumed(path, rules, initial):
    loaded = keras.models.load_model(path)
    # KerasHub saves no LoRA in the .keras file: enable it again, from the
    # same initial values in both runs.
    loaded.get_layer("bert_backbone").enable_lora(2)
    loaded.set_weights(initial)
    opt = difflr.LRMultiplier(keras.optimizers.Adam(0.01), rules(loaded))
    loaded.compile(optimizer=opt, loss="mse")
    loaded.fit(*_bert_data(), batch_size=4, epochs=1, shuffle=False, verbose=0)
    return loaded, opt


def test_lora_plus_of_a_kerashub_backbone_on_the_loaded_model(tmp_path):
    keras_hub = keras_hub_or_skip()
    old = _bert_classifier(keras_hub)
    old.get_layer("bert_backbone").enable_lora(2)
    old_rules = _bert_lora_plus(old)
    path = os.path.join(tmp_path, "bert.keras")
    old.save(path)
    initial = old.get_weights()
    loaded, opt = _bert_resumed(path, lambda _: old_rules, initial)
    reference, _ = _bert_resumed(path, _bert_lora_plus, initial)
    # Ids: embeddings 0, transformer_layer_0 1, _1 2, pooled_dense 3, head 4
    # (frozen groups keep theirs): block k at 0.5 ** (3 - k), B at 16 times.
    expected = {}
    for k, base in ((0, 0.125), (1, 0.25)):
        for dense in ("query", "value"):
            prefix = f"transformer_layer_{k}/self_attention_layer/{dense}/"
            expected.update({prefix + "bias": base, prefix + "lora_kernel_a": base,
                             prefix + "lora_kernel_b": base * 16})
    expected.update({"head/kernel": 1.0, "head/bias": 1.0})
    assert {v.path: opt.multiplier_for(v) for v in loaded.trainable_variables} == expected
    assert_same(weights(loaded), weights(reference))
    # Without LoRA the loaded model is not the structure the map was made for.
    unlike = keras.models.load_model(path)
    unlike.compile(optimizer=difflr.LRMultiplier("sgd", old_rules), loss="mse")
    with pytest.raises(ValueError, match=r"difflr.lora_plus: the model 'functional(_\d+)?' "
                       r"it was made with is a layer of another model"):
        unlike.fit(*_bert_data(), verbose=0)
