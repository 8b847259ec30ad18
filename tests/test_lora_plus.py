"""lora_plus: LoRA+ multipliers for Keras's LoRA, exact against per-variable copies."""

import keras
import numpy as np
import pytest
from keras import layers

import difflr
from conftest import assert_close, backend, to_numpy, keras_hub_or_skip

RANK = 2
STEPS = 3


def _lora_model():
    """Embedding -> EinsumDense -> Dense -> head; LoRA is enabled by the test."""
    tokens = keras.Input((3,), dtype="int32")
    emb = layers.Embedding(20, 6, name="emb")
    ein = layers.EinsumDense("abc,cd->abd", output_shape=(3, 5), bias_axes="d",
                             name="ein")
    dense = layers.Dense(4, name="dense")
    head = layers.Dense(1, name="head")
    outputs = head(layers.Flatten()(dense(ein(emb(tokens)))))
    return keras.Model(tokens, outputs), (emb, ein, dense), head


def _enable_lora(lora_layers):
    for layer in lora_layers:
        # B away from zero, so that every factor has a gradient from step 1.
        layer.enable_lora(RANK, b_initializer="glorot_uniform")


def _factors(layer):
    if isinstance(layer, layers.Embedding):
        return layer.lora_embeddings_a, layer.lora_embeddings_b
    return layer.lora_kernel_a, layer.lora_kernel_b


def _random_gradients(variables, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=tuple(v.shape)).astype("float32") for v in variables]
            for _ in range(steps)]


def _train_with(opt, variables, grads):
    for step in grads:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step], variables)


def _per_variable_copy(make, lr, initial, grads_of_variable):
    """The variable trained alone by a plain optimizer at rate `lr`."""
    v = keras.Variable(initial, name="copy")
    opt = make(lr)
    opt.build([v])
    for g in grads_of_variable:
        opt.apply([keras.ops.convert_to_tensor(g)], [v])
    return v


OPTIMIZERS = {
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "sgd_momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("lora_when", ["before_rules", "after_rules"])
@pytest.mark.parametrize("embedding_lr", [None, 0.1])
def test_each_variable_moves_as_a_copy_at_its_lora_plus_rate(name, lora_when, embedding_lr):
    model, lora_layers, head = _lora_model()
    if lora_when == "before_rules":
        _enable_lora(lora_layers)
    ratio, lr, base_lr = 4.0, 0.5, 1e-2
    rules = difflr.lora_plus(model, ratio=ratio, lr=lr, embedding_lr=embedding_lr)
    if lora_when == "after_rules":
        _enable_lora(lora_layers)
    make = OPTIMIZERS[name]
    opt = difflr.LRMultiplier(make(base_lr), rules)
    variables = model.trainable_variables
    opt.build(variables)

    expected = {}  # id(variable) -> multiplier
    for layer in lora_layers:
        a, b = _factors(layer)
        if embedding_lr is not None and isinstance(layer, layers.Embedding):
            expected[id(a)] = expected[id(b)] = embedding_lr
        else:
            expected[id(a)], expected[id(b)] = lr, lr * ratio
    assert len(expected) == 6
    for v in variables:  # biases and the head keep 1.0
        assert opt.multiplier_for(v) == expected.get(id(v), 1.0), v.path
    # The frozen original kernels are not trainable (enable_lora froze them).
    assert not any(v.name in ("kernel", "embeddings") and "head" not in v.path
                   for v in variables)

    initial = [to_numpy(v).copy() for v in variables]
    grads = _random_gradients(variables, STEPS)
    _train_with(opt, variables, grads)
    for i, v in enumerate(variables):
        m = expected.get(id(v), 1.0)
        reference = _per_variable_copy(make, base_lr * m, initial[i],
                                       [step[i] for step in grads])
        assert_close(v, reference, what=f"{name}: {v.path} at multiplier {m}")


def _numpy_lora_sgd(w0, a, b, bias, x, y, rates, momentum, steps):
    """SGD with momentum on y ~ x (w0 + A B) + bias, per variable, by hand
    (lora_alpha = rank: the scale is 1)."""
    params = {"a": a.copy(), "b": b.copy(), "bias": bias.copy()}
    velocity = {k: np.zeros_like(p) for k, p in params.items()}
    for _ in range(steps):
        kernel = w0 + params["a"] @ params["b"]
        pred = x @ kernel + params["bias"]
        dpred = 2 * (pred - y) / pred.size       # mean squared error
        dkernel = x.T @ dpred
        grads = {"a": dkernel @ params["b"].T, "b": params["a"].T @ dkernel,
                 "bias": dpred.sum(0)}
        for k in params:
            velocity[k] = momentum * velocity[k] - rates[k] * grads[k]
            params[k] = params[k] + velocity[k]
    return params


@pytest.mark.parametrize("lora_when", ["before_rules", "after_rules", "after_compile"])
def test_compiled_fit_matches_a_numpy_reference(lora_when):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    inputs = keras.Input((5,))
    dense = layers.Dense(3, name="linear")
    model = keras.Model(inputs, dense(inputs))
    enable = lambda: dense.enable_lora(RANK, b_initializer="glorot_uniform")
    if lora_when == "before_rules":
        enable()
    # A layer-wise base: LoRA+ inside the layer's group.
    rules = difflr.lora_plus(model, ratio=8.0, base={dense: 0.5})
    if lora_when == "after_rules":
        enable()
    base_lr, momentum = 0.05, 0.9
    opt = difflr.LRMultiplier(keras.optimizers.SGD(base_lr, momentum=momentum), rules)
    model.compile(optimizer=opt, loss="mse")
    if lora_when == "after_compile":  # the optimizer is built by fit
        enable()
    w0, a0, b0, bias0 = (to_numpy(v).copy() for v in
                         (dense._kernel, dense.lora_kernel_a, dense.lora_kernel_b, dense.bias))
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    rates = {"a": base_lr * 0.5, "b": base_lr * 0.5 * 8.0, "bias": base_lr * 0.5}
    expected = _numpy_lora_sgd(w0, a0, b0, bias0, x, y, rates, momentum, 3)
    assert opt.multiplier_for(dense.lora_kernel_a) == 0.5
    assert opt.multiplier_for(dense.lora_kernel_b) == 4.0
    assert opt.multiplier_for(dense.bias) == 0.5
    assert_close(dense.lora_kernel_a, expected["a"], rtol=1e-4, atol=1e-5)
    assert_close(dense.lora_kernel_b, expected["b"], rtol=1e-4, atol=1e-5)
    assert_close(dense.bias, expected["bias"], rtol=1e-4, atol=1e-5)
    assert_close(dense._kernel, w0, rtol=0, atol=0, what="the frozen kernel")


def test_composes_with_layerwise_decay_and_no_decay():
    inputs = keras.Input((4,), dtype="int32")
    x = layers.Embedding(30, 8, name="token_embedding")(inputs)
    for i in range(2):
        x = layers.Dense(8, name=f"transformer_layer_{i}")(x)
    outputs = layers.LayerNormalization(name="final_norm")(x)
    model = keras.Model(inputs, outputs)
    for name in ("token_embedding", "transformer_layer_0", "transformer_layer_1"):
        model.get_layer(name).enable_lora(RANK)
    decay = difflr.layerwise_decay(model, decay=0.5)   # 0.125, 0.25, 0.5, 1.0
    rules = difflr.lora_plus(model, ratio=16.0, base=decay)
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(1e-3, weight_decay=0.1), rules,
                              decay_multipliers=difflr.no_decay(model))
    opt.build(model.trainable_variables)
    emb, t0, t1 = (model.get_layer(n) for n in
                   ("token_embedding", "transformer_layer_0", "transformer_layer_1"))
    assert opt.multiplier_for(emb.lora_embeddings_a) == 0.125
    assert opt.multiplier_for(emb.lora_embeddings_b) == 0.125 * 16
    assert opt.multiplier_for(t0.lora_kernel_a) == 0.25
    assert opt.multiplier_for(t0.lora_kernel_b) == 0.25 * 16
    assert opt.multiplier_for(t1.lora_kernel_b) == 0.5 * 16
    assert opt.multiplier_for(t1.bias) == 0.5                  # base, not LoRA+
    assert opt.multiplier_for(model.get_layer("final_norm").gamma) == 1.0
    # no_decay: decay on the 2-D LoRA matrices, none on biases and embeddings.
    assert opt.decay_multiplier_for(t0.lora_kernel_a) == 1.0
    assert opt.decay_multiplier_for(t0.lora_kernel_b) == 1.0
    assert opt.decay_multiplier_for(t0.bias) == 0.0
    assert opt.decay_multiplier_for(emb.lora_embeddings_b) == 0.0

    # A rule of yours merged into the returned map wins over it.
    opt = difflr.LRMultiplier("adam", {**rules, t1: 3.0})
    opt.build(model.trainable_variables)
    assert opt.multiplier_for(t1.lora_kernel_b) == 3.0
    assert opt.multiplier_for(t0.lora_kernel_b) == 0.25 * 16

    # Nested layers in `base`: the innermost wins.
    inner = keras.Sequential([layers.Dense(3, name="inner_dense")], name="inner")
    inp = keras.Input((2,))
    outer = keras.Model(inp, inner(inp), name="outer")
    inner.layers[0].enable_lora(RANK)
    opt = difflr.LRMultiplier("sgd", difflr.lora_plus(
        outer, ratio=2.0, base=[(outer, 0.1), (inner.layers[0], 0.3)]))
    opt.build(outer.trainable_variables)
    assert opt.multiplier_for(inner.layers[0].lora_kernel_b) == pytest.approx(0.6)
    assert opt.multiplier_for(inner.layers[0].bias) == 0.3


def test_summary_names_the_rule():
    model, lora_layers, _ = _lora_model()
    _enable_lora(lora_layers)
    opt = difflr.LRMultiplier("adam", difflr.lora_plus(model, ratio=16))
    lines = []
    difflr.summary(model, opt, expand=True, print_fn=lines.append)
    text = "\n".join(lines)
    assert "lora_plus(ratio=16)" in text


def test_a_model_without_lora_is_a_clear_error_at_build():
    model, _, _ = _lora_model()
    rules = difflr.lora_plus(model)       # fine: LoRA may come later
    opt = difflr.LRMultiplier("adam", rules)
    with pytest.raises(ValueError, match=r"the model '.*' has no LoRA variables.*"
                                         r"layer.enable_lora\(rank\)"):
        opt.build(model.trainable_variables)
    model.compile(difflr.LRMultiplier("adam", rules), loss="mse")
    with pytest.raises(ValueError, match="has no LoRA variables"):
        model.fit(np.zeros((2, 3), "int32"), np.zeros((2, 1)), verbose=0)


def test_bad_arguments():
    model, lora_layers, _ = _lora_model()
    cases = [
        ({"ratio": 0}, ValueError, r"`ratio` must be a finite number > 0"),
        ({"ratio": "16"}, TypeError, "`ratio` must be a number"),
        ({"lr": -1.0}, ValueError, "`lr` must be a finite number >= 0"),
        ({"embedding_lr": float("nan")}, ValueError, "`embedding_lr` must be a finite"),
        ({"base": {"dense/bias": 2.0}}, TypeError, "the keys of `base` must be layers"),
        ({"base": 0.5}, TypeError, "`base` must be a rule map"),
        ({"base": {lora_layers[0]: -1.0}}, ValueError, "multiplier of layer 'emb'"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            difflr.lora_plus(model, **kwargs)
    with pytest.raises(TypeError, match="`model` must be a Keras model or layer"):
        difflr.lora_plus("model")


def test_lora_enabled_after_the_optimizer_was_built():
    """Today's behaviour when LoRA comes after the optimizer was built and a
    new fit runs: the LoRA factors never train at the default rate in silence.

    On torch and JAX the next fit raises (Keras's checks: torch names the
    unknown variable, JAX only counts variables). On TensorFlow the traced
    train function Keras keeps from the first fit still runs: it knows
    nothing of LoRA (the factors do not move, the original kernel goes on
    training), exactly as with a plain Keras optimizer; once it is traced
    anew (`model.compile` again), the fit raises as on torch.
    """
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
    inputs = keras.Input((4,))
    dense = layers.Dense(3, name="d")
    model = keras.Model(inputs, layers.Dense(1, name="head")(dense(inputs)))
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1), difflr.lora_plus(model))
    with pytest.raises(ValueError, match="has no LoRA variables"):
        opt.build(model.trainable_variables)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1))
    model.compile(opt, loss="mse")
    model.fit(x, y, batch_size=4, verbose=0)
    dense.enable_lora(RANK)
    b0, kernel0 = to_numpy(dense.lora_kernel_b).copy(), to_numpy(dense._kernel).copy()
    if backend() == "tensorflow":
        model.fit(x, y, batch_size=4, verbose=0)
        assert np.array_equal(to_numpy(dense.lora_kernel_b), b0)
        assert not np.array_equal(to_numpy(dense._kernel), kernel0)
        model.compile(opt, loss="mse")
    with pytest.raises(ValueError, match="Unknown variable|optimizer was built with"):
        model.fit(x, y, batch_size=4, verbose=0)
    if backend() != "jax":  # Keras's JAX fit leaves the variables without values
        assert np.array_equal(to_numpy(dense.lora_kernel_b), b0)


def test_keras_hub_backbone():
    keras_hub = keras_hub_or_skip()
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=8)
    decay = difflr.layerwise_decay(backbone, decay=0.5)
    rules = difflr.lora_plus(backbone, ratio=16.0, base=decay)
    backbone.enable_lora(2)            # after the rule map, before the build
    # KerasHub freezes all but the LoRA factors and the biases of their layers.
    lora = [v for v in backbone.trainable_variables if v.name.startswith("lora_")]
    assert len(lora) == 8                           # query and value, 2 layers
    make = lambda lr: keras.optimizers.Adam(lr)
    base_lr = 1e-3
    opt = difflr.LRMultiplier(make(base_lr), rules)
    variables = backbone.trainable_variables
    opt.build(variables)
    # layerwise_decay over the groups: embeddings, transformer_layer_0, _1, rest.
    assert [decay[backbone.get_layer(f"transformer_layer_{k}")] for k in (0, 1)] == [
        0.25, 0.5]
    for v in backbone.trainable_variables:
        block = backbone.get_layer("transformer_layer_" + v.path.split("transformer_layer_")[1][0])
        base = decay[block]
        expected = base * {"lora_kernel_a": 1.0, "lora_kernel_b": 16.0, "bias": 1.0}[v.name]
        assert opt.multiplier_for(v) == expected, v.path
    grads = _random_gradients(variables, STEPS, seed=3)
    initial = [to_numpy(v).copy() for v in variables]
    _train_with(opt, variables, grads)
    a = next(i for i, v in enumerate(variables) if v.name == "lora_kernel_a")
    b = next(i for i, v in enumerate(variables) if v.name == "lora_kernel_b")
    for i in (a, b):
        reference = _per_variable_copy(make, base_lr * opt.multiplier_for(variables[i]),
                                       initial[i], [step[i] for step in grads])
        assert_close(variables[i], reference, what=variables[i].path)
