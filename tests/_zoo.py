"""Small models shared by test_grouping.py and test_recipes.py.

The lookalikes copy the layer names (and the layer kinds that matter) of
KerasHub transformer backbones and keras.applications families, with tiny
Dense layers of one shape so they build fast on every backend (JAX compiles
each initializer once per weight shape). One real keras.applications model is
built once per test session: MobileNetV2 is the family with the most
irregular names (block 0 is `expanded_conv_*`, blocks 1..16 `block_N_*`).
"""

import functools

import keras
from keras import layers

WIDTH = 4


class PositionEmbedding(keras.layers.Layer):
    """Like keras_hub.layers.PositionEmbedding: a learned (length, width) table."""

    def __init__(self, length, **kwargs):
        super().__init__(**kwargs)
        self.length = length

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(
            shape=(self.length, input_shape[-1]), name="embeddings")

    def call(self, x):
        return x + self.position_embeddings


class ClassToken(keras.layers.Layer):
    """Prepends a learned class token, as ViT backbones do."""

    def build(self, input_shape):
        self.cls_token = self.add_weight(shape=(1, 1, input_shape[-1]), name="cls_token")

    def call(self, x):
        batch = keras.ops.shape(x)[0]
        token = keras.ops.broadcast_to(self.cls_token, (batch, 1, x.shape[-1]))
        return keras.ops.concatenate([token, x], axis=1)


class TransformerBlock(keras.layers.Layer):
    """A pre-norm block with a 2-D-bias projection (like attention's query
    dense), a feed-forward Dense and a 1-D layer scale."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = layers.LayerNormalization(name="norm")
        self.attention = layers.EinsumDense(
            "abc,cde->abde", output_shape=(None, 2, WIDTH // 2),
            bias_axes="de", name="attention")
        self.ffn = layers.Dense(WIDTH, name="ffn")

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.attention.build(input_shape)
        self.ffn.build(input_shape)
        self.layer_scale = self.add_weight(shape=(WIDTH,), name="layer_scale")

    def call(self, x):
        y = self.norm(x)
        a = self.attention(y)
        a = keras.ops.reshape(a, (-1, x.shape[1], WIDTH))
        return x + self.layer_scale * (self.ffn(y) + a)


def transformer_backbone(num_layers=12, seq_len=3, vocab=11, name="backbone"):
    """A KerasHub-style backbone: embeddings, `transformer_layer_i`, final norm."""
    token_ids = keras.Input((seq_len,), dtype="int32", name="token_ids")
    x = layers.Embedding(vocab, WIDTH, name="token_embedding")(token_ids)
    x = ClassToken(name="class_token")(x)
    x = PositionEmbedding(seq_len + 1, name="position_embedding")(x)
    x = layers.LayerNormalization(name="embeddings_layer_norm")(x)
    x = layers.Dropout(0.1, name="embeddings_dropout")(x)
    for i in range(num_layers):
        x = TransformerBlock(name=f"transformer_layer_{i}")(x)
    x = layers.LayerNormalization(name="sequence_output_layernorm")(x)
    return keras.Model(token_ids, x, name=name)


def transformer_classifier(num_layers=12):
    """The backbone nested in a classifier, as KerasHub task models do."""
    backbone = transformer_backbone(num_layers)
    token_ids = keras.Input((3,), dtype="int32")
    x = layers.GlobalAveragePooling1D()(backbone(token_ids))
    outputs = layers.Dense(2, name="classifier")(x)
    return keras.Model(token_ids, outputs), backbone


def named_chain(names, width=WIDTH):
    """A functional chain of equal Dense layers (BatchNormalization for names
    ending in `bn`/`BN`) carrying the given names."""
    inputs = keras.Input((width,))
    x = inputs
    for name in names:
        if name.lower().endswith("bn"):
            x = layers.BatchNormalization(name=name)(x)
        else:
            x = layers.Dense(width, name=name)(x)
    return keras.Model(inputs, x)


@functools.cache
def mobilenet_v2():
    """The real keras.applications MobileNetV2, small, built once."""
    return keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, include_top=True,
        classes=3)


def named(groups):
    return [[layer.name for layer in group] for group in groups]


def assert_partition(model, groups):
    """Every trainable variable of `model` in exactly one group."""
    count = {}
    for group in groups:
        for layer in group:
            for v in layer.trainable_variables:
                count[id(v)] = count.get(id(v), 0) + 1
    model_ids = [id(v) for v in model.trainable_variables]
    assert sorted(count) == sorted(model_ids), "groups do not cover the model"
    assert all(c == 1 for c in count.values()), "a variable is in two groups"
