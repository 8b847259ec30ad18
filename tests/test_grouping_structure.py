"""difflr.groups on real architectures where names alone mislead (issue 22,
item 7): Keras's auto-named blocks, holders reusing block numbers, and
freezing (KerasHub's `enable_lora`) before or after the recipes. Each test
compares against a hand-written group table and multiplier table."""

import warnings

import keras
import numpy as np
import pytest
from keras import layers

import difflr
from conftest import assert_close, keras_hub_or_skip, to_numpy

EMBED, HEADS, FF, MAXLEN, VOCAB = 8, 2, 8, 6, 20


# --- Keras's text classification with a Transformer (keras-io example) -----

class TransformerBlock(layers.Layer):
    """The example's block, as written there (a custom Layer subclass)."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)])
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        attn_output = self.dropout1(self.att(inputs, inputs))
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.dropout2(self.ffn(out1))
        return self.layernorm2(out1 + ffn_output)


class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_emb = layers.Embedding(vocab_size, embed_dim)
        self.pos_emb = layers.Embedding(maxlen, embed_dim)

    def call(self, x):
        positions = keras.ops.arange(0, keras.ops.shape(x)[-1], 1)
        return self.token_emb(x) + self.pos_emb(positions)


def _text_classifier():
    """The example's model with its block used twice, every layer auto-named."""
    keras.backend.clear_session()  # auto-names start again: transformer_block
    inputs = layers.Input(shape=(MAXLEN,))
    x = TokenAndPositionEmbedding(MAXLEN, VOCAB, EMBED)(inputs)
    x = TransformerBlock(EMBED, HEADS, FF)(x)
    x = TransformerBlock(EMBED, HEADS, FF)(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(4, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _split_without_warning(model, decay=0.5):
    """`groups` and `layerwise_decay`, failing on a warning from difflr
    (Keras's own may come): the structure here is not ambiguous."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="difflr")
        return difflr.groups(model), difflr.layerwise_decay(model, decay=decay)


def test_keras_auto_named_blocks_the_unnumbered_one_is_block_0():
    model = _text_classifier()
    weighted = [l for l in model.layers if l.weights]
    embedding, block0, block1, hidden, output = weighted
    assert (block0.name, block1.name) == ("transformer_block", "transformer_block_1")
    split, rules = _split_without_warning(model)
    assert split == [[embedding], [block0], [block1], [hidden], [output]]
    assert (split.layer_ids, split.num_layer_ids) == ([0, 1, 2, 3, 4], 5)
    # Hand-written: ids 0..4, m = 0.5 ** (4 - id).
    assert rules == {embedding: 0.0625, block0: 0.125, block1: 0.25,
                     hidden: 0.5, output: 1.0}
    # Per variable, through the optimizer: every variable of block k at its rate.
    opt = difflr.LRMultiplier(keras.optimizers.SGD(1.0), rules)
    opt.build(model.trainable_variables)
    for layer, m in rules.items():
        for v in layer.trainable_variables:
            assert opt.multiplier_for(v) == m, v.path


# --- Two holders reusing block numbers (an encoder and a decoder) ----------

class Stack(layers.Layer):
    """A layer holding its blocks as direct sublayers, numbered from 0, as
    KerasHub's ViT encoder holds `transformer_block_<i>`."""

    def __init__(self, num_blocks, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [layers.Dense(4, name=f"transformer_block_{i}")
                       for i in range(num_blocks)]

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _encoder_decoder():
    decoder = Stack(2, name="decoder")  # made first, applied second
    encoder = Stack(2, name="encoder")
    inputs = keras.Input((4,), dtype="int32")
    x = layers.Embedding(10, 4, name="token_embedding")(inputs)
    x = decoder(encoder(x))
    outputs = layers.Dense(1, name="head")(x)
    return keras.Model(inputs, outputs), encoder, decoder


def test_blocks_of_two_holders_are_told_apart_in_the_order_applied():
    model, encoder, decoder = _encoder_decoder()
    (e0, e1), (d0, d1) = encoder.blocks, decoder.blocks
    embedding, head = model.get_layer("token_embedding"), model.get_layer("head")
    split, rules = _split_without_warning(model)
    assert split == [[embedding], [e0], [e1], [d0], [d1], [head]]
    assert rules == {embedding: 0.03125, e0: 0.0625, e1: 0.125, d0: 0.25,
                     d1: 0.5, head: 1.0}


def _sub_model(name):
    """A functional sub-model with MobileNetV2-style block names."""
    inputs = keras.Input((4,))
    x = inputs
    for k in (1, 2):
        x = layers.Dense(4, name=f"block_{k}_expand")(x)
        x = layers.Dense(4, name=f"block_{k}_project")(x)
    return keras.Model(inputs, x, name=name)


def test_sub_models_reusing_block_names_and_a_subclassed_encoder_decoder():
    encoder, decoder = _sub_model("encoder"), _sub_model("decoder")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(1, name="head")(decoder(encoder(inputs))))
    blocks = lambda m, k: [m.get_layer(f"block_{k}_expand"), m.get_layer(f"block_{k}_project")]
    assert difflr.groups(model) == [
        blocks(encoder, 1), blocks(encoder, 2), blocks(decoder, 1), blocks(decoder, 2),
        [model.get_layer("head")]]

    class EncoderDecoder(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = Stack(2, name="encoder")
            self.decoder = Stack(2, name="decoder")
            self.head = layers.Dense(1, name="head")

        def call(self, x):
            return self.head(self.decoder(self.encoder(x)))

    model = EncoderDecoder()
    model(keras.ops.ones((1, 4)))
    assert difflr.groups(model) == [[b] for b in model.encoder.blocks + model.decoder.blocks] + [
        [model.head]]


# --- Truly ambiguous structures warn, naming what was found -----------------

def test_blocks_applied_against_their_numbers_warn_and_keep_the_numbers():
    inputs = keras.Input((3,), dtype="int32")
    x = layers.Embedding(7, 4, name="token_embedding")(inputs)
    for i in (2, 10, 1):
        x = layers.Dense(4, name=f"transformer_layer_{i}")(x)
    model = keras.Model(inputs, x)
    with pytest.warns(UserWarning, match=r"block 'transformer_layer_1' is applied "
                      r"after block 'transformer_layer_10'.*`groups=`"):
        split = difflr.groups(model)
    assert [[l.name for l in g] for g in split] == [
        ["token_embedding"], ["transformer_layer_1"], ["transformer_layer_2"],
        ["transformer_layer_10"]]


def test_two_families_matching_equally_warn():
    inputs = keras.Input((4,))
    x = layers.Dense(4, name="conv1_a")(inputs)      # a ResNet stage name
    x = layers.Dense(4, name="block1_conv1")(x)      # a VGG stage name
    model = keras.Model(inputs, layers.Dense(1, name="head")(x))
    with pytest.warns(UserWarning, match=r"2 block-naming families match 1 layers "
                      r"each.*'conv1_a'.*'block1_conv1'"):
        difflr.groups(model)


# --- Freezing before or after the recipes: the same rates -----------------

def _bert():
    keras_hub = keras_hub_or_skip()
    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=8)


# Hand-written: embeddings (id 0), transformer_layer_0 (1), _1 (2), the
# pooler (3); layerwise_decay(0.5) gives 0.5 ** (3 - id).
_BERT_GROUPS = [["token_embedding", "position_embedding", "segment_embedding",
                 "embeddings_layer_norm"], ["transformer_layer_0"],
                ["transformer_layer_1"], ["pooled_dense"]]
_BERT_DECAY = {"token_embedding": 0.125, "position_embedding": 0.125,
               "segment_embedding": 0.125, "embeddings_layer_norm": 0.125,
               "transformer_layer_0": 0.25, "transformer_layer_1": 0.5,
               "pooled_dense": 1.0}
_BERT_FACTOR = {0: 1 / 27, 1: 1 / 9, 2: 1 / 3, 3: 1.0}  # discriminative(factor=3)


def _expected_lora_plus(variable):
    """The LoRA+ (ratio 16) multiplier of a variable that trains after
    `enable_lora`: its block's decay, times 16 for a `B` factor."""
    block = variable.path.split("/")[0]
    return _BERT_DECAY[block] * (16.0 if variable.name == "lora_kernel_b" else 1.0)


@pytest.mark.parametrize("lora_when", ["before", "after"])
def test_keras_hub_enable_lora_before_or_after_layerwise_decay(lora_when):
    backbone = _bert()
    names = lambda split: [[l.name for l in g] for g in split]
    if lora_when == "before":
        backbone.enable_lora(2)
    split = difflr.groups(backbone)
    decay = difflr.layerwise_decay(backbone, decay=0.5)
    factor = difflr.discriminative(backbone, factor=3)
    if lora_when == "after":
        assert names(split) == _BERT_GROUPS
        assert {l.name: m for l, m in decay.items()} == _BERT_DECAY
        ids = [0, 1, 2, 3]
        backbone.enable_lora(2)
    else:
        # The frozen embeddings and pooler leave the list, not the structure.
        assert names(split) == _BERT_GROUPS[1:3]
        assert {l.name: m for l, m in decay.items()} == {
            "transformer_layer_0": 0.25, "transformer_layer_1": 0.5}
        ids = [1, 2]
    for layer, m in factor.items():
        group = next(i for i, g in enumerate(_BERT_GROUPS) if layer.name in g)
        assert m == pytest.approx(_BERT_FACTOR[group], rel=1e-12), layer.name

    # Per trainable variable, through the optimizer: the same table either way.
    variables = backbone.trainable_variables
    assert len(variables) == 12  # query/value bias, lora a, lora b; 2 layers
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1),
                              difflr.lora_plus(backbone, ratio=16.0, base=decay))
    opt.build(variables)
    expected = [_expected_lora_plus(v) for v in variables]
    assert [opt.multiplier_for(v) for v in variables] == expected
    # And one SGD step moves each variable by -0.1 * m * gradient.
    before = [to_numpy(v) for v in variables]
    grads = [keras.ops.ones(v.shape) for v in variables]
    opt.apply_gradients(zip(grads, variables))
    for v, b, m in zip(variables, before, expected):
        assert_close(v, b - np.float32(0.1 * m), what=v.path)
    assert (split.layer_ids, split.num_layer_ids) == (ids, 4)


def test_a_layer_frozen_before_or_after_the_recipe_moves_no_other_rate():
    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((4,)),
            layers.Dense(4, name="d0"),
            layers.BatchNormalization(name="d0_bn"),  # moving stats: not counted
            layers.Dense(4, name="d1"),
            layers.Dense(1, name="head"),
        ])
    late = build()
    late_rules = difflr.layerwise_decay(late, decay=0.5)
    early = build()
    early.get_layer("d1").trainable = False
    early_rules = difflr.layerwise_decay(early, decay=0.5)
    # Hand-written: [d0, d0_bn] id 0, d1 id 1, head id 2.
    assert {l.name: m for l, m in late_rules.items()} == {
        "d0": 0.25, "d0_bn": 0.25, "d1": 0.5, "head": 1.0}
    assert {l.name: m for l, m in early_rules.items()} == {
        "d0": 0.25, "d0_bn": 0.25, "head": 1.0}
    split = difflr.groups(early)
    assert (split.layer_ids, split.num_layer_ids) == ([0, 2], 3)
    # Unfrozen again, it is back in its group.
    early.get_layer("d1").trainable = True
    assert {l.name: m for l, m in difflr.layerwise_decay(early, decay=0.5).items()} == {
        "d0": 0.25, "d0_bn": 0.25, "d1": 0.5, "head": 1.0}
