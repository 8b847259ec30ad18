"""discriminative, layerwise_decay, no_decay: exact multipliers and their updates."""

import re

import keras
import numpy as np
import pytest
from keras import layers

import difflr
from conftest import assert_close, to_numpy
from _zoo import mobilenet_v2, named_chain, transformer_backbone, transformer_classifier


def _by_name(rules):
    return {layer.name: m for layer, m in rules.items()}


def _fastai_even_mults(start, stop, n):
    """fastai's `even_mults`, written out: the rates of `lr=slice(start, stop)`."""
    step = (stop / start) ** (1 / (n - 1))
    return [start * step ** i for i in range(n)]


# discriminative


def test_discriminative_values():
    model = named_chain(["a", "a_bn", "b", "c", "d"])  # 4 groups: [a, a_bn], b, c, d
    lo, hi = 1e-5, 1e-3
    rules = difflr.discriminative(model, lr=slice(lo, hi))
    expected = [r / hi for r in _fastai_even_mults(lo, hi, 4)]
    assert list(rules) == [model.get_layer(n) for n in ("a", "a_bn", "b", "c", "d")]
    got = _by_name(rules)
    assert got["a"] == got["a_bn"] == pytest.approx(expected[0], rel=1e-12)
    assert got["a"] == pytest.approx(0.01, rel=1e-12)
    assert [got["b"], got["c"]] == pytest.approx(expected[1:3], rel=1e-12)
    assert got["d"] == 1.0  # the head exactly

    assert _by_name(difflr.discriminative(model, lr=slice(hi))) == {
        "a": 0.1, "a_bn": 0.1, "b": 0.1, "c": 0.1, "d": 1.0}
    assert _by_name(difflr.discriminative(model, factor=2.6)) == pytest.approx({
        "a": 2.6 ** -3, "a_bn": 2.6 ** -3, "b": 2.6 ** -2, "c": 2.6 ** -1, "d": 1.0},
        rel=1e-15)
    assert set(difflr.discriminative(model, lr=slice(hi, hi)).values()) == {1.0}
    assert set(difflr.discriminative(model, factor=1).values()) == {1.0}

    # A list of groups (a single layer is a group of one); one group -> 1.0.
    a, b, c = (model.get_layer(n) for n in "abc")
    assert _by_name(difflr.discriminative([[a, b], c], factor=4)) == {
        "a": 0.25, "b": 0.25, "c": 1.0}
    for kwargs in ({"lr": slice(lo, hi)}, {"lr": slice(hi)}, {"factor": 2.6}):
        assert _by_name(difflr.discriminative([a], **kwargs)) == {"a": 1.0}

    # A rule map like any other: merge rules of your own into it.
    opt = difflr.LRMultiplier("sgd", {**difflr.discriminative(model, factor=2.0), b: 0.0})
    opt.build(model.trainable_variables)
    assert [opt.multiplier_for(v) for v in (a.kernel, b.kernel, c.kernel)] == [0.125, 0.0, 0.5]


def test_discriminative_errors():
    model = named_chain(["a", "b"])
    a, b = model.layers[1:]
    cases = [
        ({}, ValueError, "exactly one of"),
        ({"lr": slice(1e-4, 1e-3), "factor": 2.6}, ValueError, "exactly one of"),
        ({"lr": slice(0, 1e-3)}, ValueError, r"`lo` must be > 0: rates cannot be spaced"),
        ({"lr": slice(-1e-4, 1e-3)}, ValueError, "`lo` must be > 0"),
        ({"lr": slice(1e-2, 1e-3)}, ValueError, r"must be <= `hi`"),
        ({"lr": slice(0)}, ValueError, r"`hi \(lr.stop\)` must be a finite number > 0"),
        ({"lr": slice(1e-4, 1e-3, 2)}, ValueError, r"slice\(lo, hi\)` or `slice\(hi\)"),
        ({"lr": slice(1e-4, None)}, ValueError, r"slice\(lo, hi\)` or `slice\(hi\)"),
        ({"lr": 1e-3}, TypeError, "A single rate for every group needs no multipliers"),
        ({"lr": slice("1e-4", 1e-3)}, TypeError, r"`lo \(lr.start\)` must be a number"),
        ({"factor": 0.5}, ValueError, "`factor` must be a finite number >= 1; received 0.5"),
        ({"factor": float("nan")}, ValueError, "`factor` must be a finite number >= 1"),
        ({"factor": "2.6"}, TypeError, "`factor` must be a number"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            difflr.discriminative(model, **kwargs)
    with pytest.raises(ValueError, match=r"'a/kernel' is in group 0 \(layer 'a'\) and again"):
        difflr.discriminative([[a], [a, b]], factor=2.6)
    with pytest.raises(TypeError, match="group 1 must be a non-empty list of Keras layers"):
        difflr.discriminative([[a], "b"], factor=2.6)
    with pytest.raises(ValueError, match="is not built"):
        difflr.discriminative(keras.Sequential([layers.Dense(2)]), factor=2.6)
    with pytest.raises(TypeError, match="must be a Keras model .* or a list of groups"):
        difflr.discriminative({a: 1.0}, factor=2.6)


def _numpy_sgd_chain(weights, x, y, lr, mults, momentum, steps):
    """Keras SGD with momentum on a linear Dense chain under MSE, by hand."""
    params = [w.copy() for w in weights]  # [W1, b1, W2, b2, ...]
    velocity = [np.zeros_like(w) for w in params]
    n = len(params) // 2
    for _ in range(steps):
        acts = [x]
        for k in range(n):
            acts.append(acts[-1] @ params[2 * k] + params[2 * k + 1])
        delta = 2 * (acts[-1] - y) / y.size
        grads = [None] * len(params)
        for k in reversed(range(n)):
            grads[2 * k] = acts[k].T @ delta
            grads[2 * k + 1] = delta.sum(0)
            delta = delta @ params[2 * k].T
        for i, g in enumerate(grads):
            velocity[i] = momentum * velocity[i] - lr * mults[i // 2] * g
            params[i] = params[i] + velocity[i]
    return params


def test_discriminative_updates_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    inputs = keras.Input((5,))
    h = layers.Dense(4, name="d1")(inputs)
    h = layers.Dense(3, name="d2")(h)
    model = keras.Model(inputs, layers.Dense(2, name="head")(h))
    start = [to_numpy(w).copy() for w in model.trainable_variables]
    rules = difflr.discriminative(model, factor=2.6)
    model.compile(optimizer=difflr.LRMultiplier(
        keras.optimizers.SGD(0.1, momentum=0.9), rules), loss="mse")
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    expected = _numpy_sgd_chain(start, x, y, lr=0.1, mults=[2.6 ** -2, 2.6 ** -1, 1.0],
                                momentum=0.9, steps=3)
    for v, e in zip(model.trainable_variables, expected):
        assert_close(v, e, rtol=1e-4, atol=1e-5, what=v.path)


# layerwise_decay

L = 12


def test_layerwise_decay_follows_timm_layer_ids():
    backbone = transformer_backbone(num_layers=L)
    embeddings = ("token_embedding", "class_token", "position_embedding",
                  "embeddings_layer_norm")
    # timm / BEiT: embeddings id 0, block i id i + 1, the rest id L + 1;
    # scale = decay ** (L + 1 - id).
    expected = {name: 0.75 ** (L + 1) for name in embeddings}
    expected.update({f"transformer_layer_{i}": 0.75 ** (L + 1 - (i + 1)) for i in range(L)})
    expected["sequence_output_layernorm"] = 1.0
    got = _by_name(difflr.layerwise_decay(backbone))
    assert got == pytest.approx(expected, rel=1e-12)
    assert got["sequence_output_layernorm"] == 1.0
    assert min(got.values()) == got["token_embedding"]

    floored = _by_name(difflr.layerwise_decay(backbone, decay=0.5, min_multiplier=0.01))
    assert floored["token_embedding"] == 0.01  # 0.5 ** 13 is below the floor
    assert floored["transformer_layer_5"] == 0.01  # 0.5 ** 7 too
    assert floored["transformer_layer_6"] == 0.5 ** 6 == 0.015625
    assert floored["transformer_layer_11"] == 0.5

    # Own groups: embeddings, all blocks together, final norm.
    blocks = [backbone.get_layer(f"transformer_layer_{i}") for i in range(L)]
    own = [[backbone.get_layer(n) for n in embeddings], blocks,
           backbone.get_layer("sequence_output_layernorm")]
    got = _by_name(difflr.layerwise_decay(backbone, decay=0.5, groups=own))
    assert got == {**{n: 0.25 for n in embeddings},
                   **{b.name: 0.5 for b in blocks}, "sequence_output_layernorm": 1.0}

    # Nested in a task model, through the optimizer: the classifier is the
    # head, the final norm one step below it.
    model, backbone = transformer_classifier(num_layers=L)
    opt = difflr.LRMultiplier("adamw", difflr.layerwise_decay(model, decay=0.8))
    opt.build(model.trainable_variables)
    block3 = backbone.get_layer("transformer_layer_3")
    assert opt.multiplier_for(block3.ffn.kernel) == pytest.approx(0.8 ** (L + 2 - 4))
    assert opt.multiplier_for(block3.layer_scale) == pytest.approx(0.8 ** (L + 2 - 4))
    assert opt.multiplier_for(backbone.get_layer("class_token").cls_token) == (
        pytest.approx(0.8 ** (L + 2)))
    assert opt.multiplier_for(
        backbone.get_layer("sequence_output_layernorm").gamma) == pytest.approx(0.8)
    assert opt.multiplier_for(model.get_layer("classifier").kernel) == 1.0


def test_layerwise_decay_on_keras_applications_mobilenet_v2():
    model = mobilenet_v2()  # stem, block 0, blocks 1..16, top conv, head: 20 groups

    def expected_exponent(layer_name):
        if layer_name in ("Conv1", "bn_Conv1"):
            return 19
        if layer_name.startswith("expanded_conv_"):
            return 18
        block = re.fullmatch(r"block_(\d+)_.*", layer_name)
        if block:
            return 18 - int(block.group(1))
        return {"Conv_1": 1, "Conv_1_bn": 1, "predictions": 0}[layer_name]

    opt = difflr.LRMultiplier("sgd", difflr.layerwise_decay(model, decay=0.9))
    opt.build(model.trainable_variables)
    for v in model.trainable_variables:
        exponent = expected_exponent(v.path.split("/")[0])
        assert opt.multiplier_for(v) == pytest.approx(0.9 ** exponent, rel=1e-6), v.path


def test_layerwise_decay_errors():
    model = named_chain(["a", "b", "c"])
    a, b, c = model.layers[1:]
    for kwargs, error, message in [
        ({"decay": 0}, ValueError, "`decay` must be a finite number > 0 and <= 1"),
        ({"decay": 1.5}, ValueError, "`decay` must be a finite number > 0 and <= 1"),
        ({"decay": "0.7"}, TypeError, "`decay` must be a number"),
        ({"min_multiplier": 1.5}, ValueError, "`min_multiplier` must be a finite number >= 0 and"),
        ({"min_multiplier": -0.1}, ValueError, "`min_multiplier` must be a finite number >= 0 and"),
        ({"groups": [[a], [c]]}, ValueError, r"leave out .*'b/kernel', 'b/bias'"),
        ({"groups": [[a, b], [b, c]]}, ValueError, r"'b/kernel' is in group 0"),
    ]:
        with pytest.raises(error, match=message):
            difflr.layerwise_decay(model, **kwargs)
    with pytest.raises(TypeError, match="needs a Keras model"):
        difflr.layerwise_decay([[a], [b, c]])


# no_decay


def _decay_multipliers(model, rules):
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(1e-3, weight_decay=0.1),
                              decay_multipliers=rules)
    opt.build(model.trainable_variables)
    return {v.path: opt.decay_multiplier_for(v) for v in model.trainable_variables}


def test_no_decay_on_a_transformer():
    model, backbone = transformer_classifier(num_layers=2)
    zero = {"token_embedding/embeddings", "class_token/cls_token",
            "position_embedding/embeddings", "embeddings_layer_norm/gamma",
            "embeddings_layer_norm/beta", "sequence_output_layernorm/gamma",
            "sequence_output_layernorm/beta", "classifier/bias"}
    for i in range(2):
        zero |= {f"transformer_layer_{i}/{name}" for name in (
            "layer_scale", "norm/gamma", "norm/beta",
            "attention/bias",  # 2-D, still a bias
            "ffn/bias")}
    decayed = {f"transformer_layer_{i}/{name}" for i in range(2)
               for name in ("attention/kernel", "ffn/kernel")} | {"classifier/kernel"}
    rules = difflr.no_decay(model)
    assert set(rules.values()) == {0.0}
    # Normalization and embedding layers are keys themselves.
    for name in ("token_embedding", "embeddings_layer_norm", "sequence_output_layernorm"):
        assert backbone.get_layer(name) in rules
    resolved = _decay_multipliers(model, rules)
    assert set(resolved) == zero | decayed
    assert {p for p, d in resolved.items() if d == 0.0} == zero
    assert {p for p, d in resolved.items() if d == 1.0} == decayed


class _Scale(keras.layers.Layer):
    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        self.scale_shape = shape

    def build(self, input_shape):
        self.scale = self.add_weight(shape=self.scale_shape, name="scale")

    def call(self, x):
        return x * keras.ops.mean(self.scale)


def test_no_decay_with_repeated_paths_and_on_mobilenet_v2():
    def sub(name, scale_shape=(3,)):
        # Functional sub-models keep their own variable paths: two `proj/bias`.
        inputs = keras.Input((3,))
        outputs = _Scale(scale_shape, name="w")(layers.Dense(3, name="proj")(inputs))
        return keras.Model(inputs, outputs, name=name)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, sub("s2")(sub("s1")(inputs)))
    opt = difflr.LRMultiplier("adamw", decay_multipliers=difflr.no_decay(model))
    opt.build(model.trainable_variables)
    resolved = [(v.path, opt.decay_multiplier_for(v)) for v in model.trainable_variables]
    assert resolved == [("proj/kernel", 1.0), ("proj/bias", 0.0), ("w/scale", 0.0)] * 2

    inputs = keras.Input((3,))
    mixed = keras.Model(inputs, sub("s2", (3, 3))(sub("s1")(inputs)))
    with pytest.raises(ValueError, match="2 trainable variables share the path 'w/scale'"):
        difflr.no_decay(mixed)
    with pytest.raises(ValueError, match="is not built"):
        difflr.no_decay(keras.Sequential([layers.Dense(2)]))

    model = mobilenet_v2()
    resolved = _decay_multipliers(model, difflr.no_decay(model))
    bn_layers = {l.name for l in model.layers if isinstance(l, layers.BatchNormalization)}
    for path, d in resolved.items():
        layer, name = path.split("/")
        expected_zero = layer in bn_layers or name == "bias"
        assert d == (0.0 if expected_zero else 1.0), path
    kernels = [p for p, d in resolved.items() if d == 1.0]
    assert len(kernels) == len([l for l in model.layers if l.trainable_weights
                                and l.name not in bn_layers])  # one kernel each


def test_no_decay_update_matches_keras_exclude_from_weight_decay():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")

    def build():
        inputs = keras.Input((3,))
        h = layers.LayerNormalization(name="ln")(layers.Dense(4, name="d1")(inputs))
        return keras.Model(inputs, layers.Dense(2, name="head")(h))

    model, reference, undecayed = build(), build(), build()
    reference.set_weights(model.get_weights())
    undecayed.set_weights(model.get_weights())
    model.compile(optimizer=difflr.LRMultiplier(
        keras.optimizers.SGD(0.1, weight_decay=0.3),
        decay_multipliers=difflr.no_decay(model)), loss="mse")
    plain = keras.optimizers.SGD(0.1, weight_decay=0.3)
    zero = {"d1/bias", "ln/gamma", "ln/beta", "head/bias"}
    plain.exclude_from_weight_decay(
        var_list=[v for v in reference.trainable_variables if v.path in zero])
    reference.compile(optimizer=plain, loss="mse")
    undecayed.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    for m in (model, reference, undecayed):
        m.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    for v, r in zip(model.trainable_variables, reference.trainable_variables):
        assert_close(v, r, rtol=1e-5, atol=1e-6, what=v.path)
    # The decay did act (on the kernels): without any, they end elsewhere.
    assert not np.allclose(to_numpy(model.get_layer("d1").kernel),
                           to_numpy(undecayed.get_layer("d1").kernel), atol=1e-3)
