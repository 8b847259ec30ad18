"""difflr.groups: exact membership per model family, and the partition invariant."""

import keras
import pytest
from keras import layers

import difflr
from difflr import grouping
from _zoo import (assert_partition, mobilenet_v2, named, named_chain,
                  transformer_backbone, transformer_classifier)


def _groups(model):
    result = difflr.groups(model)
    assert_partition(model, result)
    return named(result)


def test_sequential_one_group_per_weighted_layer_norms_join_the_layer_before():
    model = keras.Sequential([
        keras.Input((5,)),
        layers.LayerNormalization(name="input_norm"),  # nothing before: first group
        layers.Dense(4, name="d1"),
        layers.BatchNormalization(name="d1_bn"),
        layers.Dropout(0.2),
        layers.Activation("relu"),
        layers.Dense(4, name="d2"),
        layers.GroupNormalization(groups=2, name="d2_gn"),
        layers.Dense(2, name="head"),
    ])
    assert _groups(model) == [["input_norm", "d1", "d1_bn"], ["d2", "d2_gn"], ["head"]]


def test_functional_groups_by_depth_frozen_left_out_shared_once():
    inputs = keras.Input((4,))
    frozen = layers.Dense(4, name="frozen")
    frozen.trainable = False
    shared = layers.Dense(4, name="shared")
    x = shared(frozen(inputs))
    x = layers.Dense(4, name="middle")(x)
    outputs = shared(x)  # used twice: it stays where it is first used
    model = keras.Model(inputs, outputs)
    assert _groups(model) == [["shared"], ["middle"]]

    # Weighted layers at the same depth of parallel branches share a group.
    inputs = keras.Input((6,))
    a = layers.Dense(4, name="a1")(inputs)
    a = layers.BatchNormalization(name="a1_bn")(a)
    a = layers.Dense(4, name="a2")(a)
    # Weightless layers do not count: b1 is as deep as a1.
    b = layers.Dense(4, name="b1")(layers.Dropout(0.1)(layers.Activation("relu")(inputs)))
    c = keras.ops.add(a, layers.Dense(4, name="c1")(b))  # a keras.ops node
    outputs = layers.Dense(1, name="head")(layers.Concatenate()([c, b]))
    model = keras.Model(inputs, outputs)
    # Within a group, layers come in a topological order Keras chooses.
    assert [set(g) for g in _groups(model)] == [{"a1", "a1_bn", "b1"}, {"a2", "c1"}, {"head"}]


def test_nested_backbone_is_split_by_its_own_structure_then_the_head():
    backbone = keras.Sequential([
        keras.Input((6,)),
        layers.Dense(4, name="bb1"),
        layers.BatchNormalization(name="bb1_bn"),
        layers.Dense(4, name="bb2"),
    ], name="backbone")
    inputs = keras.Input((6,))
    x = backbone(inputs)
    x = layers.BatchNormalization(name="neck_bn")(x)  # joins bb2's group
    x = layers.Dense(3, name="h1")(layers.Dropout(0.5)(x))
    outputs = layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs)
    assert _groups(model) == [["bb1", "bb1_bn"], ["bb2", "neck_bn"], ["h1"], ["head"]]

    # A backbone layer reused by the task model (tied embeddings) stays in
    # the backbone's group.
    outputs = backbone.get_layer("bb1")(layers.Dense(6, name="h2")(x))
    tied = keras.Model(inputs, outputs)
    assert _groups(tied) == [["bb1", "bb1_bn"], ["bb2", "neck_bn"], ["h1"], ["h2"]]


class _Chain(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = layers.Dense(4, name="first")
        self.skip = layers.Dropout(0.1)
        self.second = layers.Dense(2, name="second")

    def call(self, x):
        return self.second(self.skip(self.first(x)))


class _WithOwnWeight(_Chain):
    def build(self, input_shape):
        super().build(input_shape)
        self.scale = self.add_weight(shape=(), name="scale")


def test_subclassed_models_chain_their_layers_unless_they_own_weights():
    model = _Chain()
    model(keras.ops.ones((1, 3)))
    assert _groups(model) == [["first"], ["second"]]
    own = _WithOwnWeight(name="own")
    own(keras.ops.ones((1, 3)))
    # Its own weight is in no sub-layer: the model stays whole.
    assert difflr.groups(own) == [[own]]


def test_resnet_efficientnet_vgg_convnext_names_group_by_stage():
    model = named_chain([
        "conv1_conv", "conv1_bn",
        "conv2_block1_1_conv", "conv2_block1_1_bn", "conv2_block2_1_conv",
        "pool2_conv",  # DenseNet's transition: joins the stage before it
        "conv3_block1_1_conv", "conv3_block1_1_bn",
        "conv10_block1_1_conv",  # numbers, not strings: 10 after 3
        "post_bn", "predictions",
    ])
    assert _groups(model) == [
        ["conv1_conv", "conv1_bn"],
        ["conv2_block1_1_conv", "conv2_block1_1_bn", "conv2_block2_1_conv", "pool2_conv"],
        ["conv3_block1_1_conv", "conv3_block1_1_bn"],
        ["conv10_block1_1_conv", "post_bn"],
        ["predictions"],
    ]
    # EfficientNet: stem first, stages by number, top conv last.
    model = named_chain([
        "stem_conv", "stem_bn",
        "block1a_dwconv", "block1a_bn", "block1a_project_conv",
        "block2a_expand_conv", "block2a_bn", "block2b_expand_conv",
        "block2b_project_bn",
        "top_conv", "top_bn", "predictions",
    ])
    assert _groups(model) == [
        ["stem_conv", "stem_bn"],
        ["block1a_dwconv", "block1a_bn", "block1a_project_conv"],
        ["block2a_expand_conv", "block2a_bn", "block2b_expand_conv", "block2b_project_bn"],
        ["top_conv", "top_bn"],
        ["predictions"],
    ]
    # VGG (and Xception) stages; ConvNeXt stages, each downsampling block
    # opening the stage after it (as timm groups them).
    vgg = named_chain(["block1_conv1", "block1_conv2", "block2_conv1", "fc1", "predictions"])
    assert _groups(vgg) == [["block1_conv1", "block1_conv2"], ["block2_conv1"],
                            ["fc1"], ["predictions"]]
    convnext = named_chain([
        "convnext_tiny_stem", "convnext_tiny_stage_0_block_0_depthwise_conv",
        "convnext_tiny_stage_0_block_1_depthwise_conv", "convnext_tiny_downsampling_block_0",
        "convnext_tiny_stage_1_block_0_depthwise_conv", "convnext_tiny_head_dense"])
    assert _groups(convnext) == [
        ["convnext_tiny_stem"],
        ["convnext_tiny_stage_0_block_0_depthwise_conv",
         "convnext_tiny_stage_0_block_1_depthwise_conv"],
        ["convnext_tiny_downsampling_block_0", "convnext_tiny_stage_1_block_0_depthwise_conv"],
        ["convnext_tiny_head_dense"],
    ]


def test_mobilenet_names_group_by_block_and_the_real_mobilenet_v2():
    v3 = named_chain(
        ["conv", "conv_bn", "expanded_conv_depthwise", "expanded_conv_project_bn"]
        + [f"expanded_conv_{i}_expand" for i in range(1, 12)]
        + ["conv_1", "conv_1_bn", "conv_2", "logits"])
    assert _groups(v3) == (
        [["conv", "conv_bn"], ["expanded_conv_depthwise", "expanded_conv_project_bn"]]
        + [[f"expanded_conv_{i}_expand"] for i in range(1, 12)]
        + [["conv_1", "conv_1_bn"], ["conv_2"], ["logits"]])
    # MobileNet: `conv1_bn` also looks like a ResNet stage; the family with
    # the most matching layers wins.
    v1 = named_chain(["conv1", "conv1_bn", "conv_dw_1", "conv_dw_1_bn", "conv_pw_1",
                      "conv_pw_1_bn", "conv_dw_2", "conv_pw_2", "conv_preds"])
    assert _groups(v1) == [["conv1", "conv1_bn"],
                           ["conv_dw_1", "conv_dw_1_bn", "conv_pw_1", "conv_pw_1_bn"],
                           ["conv_dw_2", "conv_pw_2"], ["conv_preds"]]

    # The real MobileNetV2 of keras.applications.
    model = mobilenet_v2()
    block = ["expand", "expand_BN", "depthwise", "depthwise_BN", "project", "project_BN"]
    assert _groups(model) == (
        [["Conv1", "bn_Conv1"],
         ["expanded_conv_depthwise", "expanded_conv_depthwise_BN",
          "expanded_conv_project", "expanded_conv_project_BN"]]
        + [[f"block_{n}_{part}" for part in block] for n in range(1, 17)]
        + [["Conv_1", "Conv_1_bn"], ["predictions"]])


def test_transformer_embeddings_first_blocks_in_numeric_order_then_the_rest():
    backbone = transformer_backbone(num_layers=12)
    expected = (
        [["token_embedding", "class_token", "position_embedding", "embeddings_layer_norm"]]
        + [[f"transformer_layer_{i}"] for i in range(12)]
        + [["sequence_output_layernorm"]])
    got = _groups(backbone)
    assert got == expected
    order = [g[0] for g in got]
    assert order.index("transformer_layer_10") == order.index("transformer_layer_9") + 1
    assert order.index("transformer_layer_11") == order.index("transformer_layer_10") + 1

    # Nested in a task model, the backbone keeps its split; the head follows.
    model, _ = transformer_classifier(num_layers=12)
    assert _groups(model) == expected + [["classifier"]]

    # Blocks are ordered by their number, even applied out of order.
    inputs = keras.Input((3,), dtype="int32")
    x = layers.Embedding(7, 4, name="token_embedding")(inputs)
    for i in (2, 10, 1):  # applied out of order: the names decide
        x = layers.Dense(4, name=f"transformer_layer_{i}")(x)
    model = keras.Model(inputs, x)
    with pytest.warns(UserWarning, match="applied after"):  # said, not silent
        got = _groups(model)
    assert got == [["token_embedding"], ["transformer_layer_1"],
                   ["transformer_layer_2"], ["transformer_layer_10"]]


def test_repr_shows_one_line_per_group():
    model = named_chain(["a", "b_bn", "c", "d", "e", "f", "g"])
    text = repr(difflr.groups(model))
    assert text == "[[a, b_bn],\n [c],\n [d],\n [e],\n [f],\n [g]]"
    long = grouping.check_groups([model.layers[1:6]], "t")
    assert repr(long) == "[[a, b_bn, ..., e] (5 layers)]"


def test_errors_name_the_culprit():
    with pytest.raises(TypeError, match="needs a Keras model"):
        difflr.groups("model")
    unbuilt = keras.Sequential([layers.Dense(3)], name="lazy")
    with pytest.raises(ValueError, match="'lazy' is not built"):
        difflr.groups(unbuilt)
    frozen = keras.Sequential([keras.Input((3,)), layers.Dense(2)], name="ice")
    frozen.trainable = False
    with pytest.raises(ValueError, match="'ice' has no trainable variables"):
        difflr.groups(frozen)


def test_check_groups_rejects_overlaps_gaps_and_weightless_layers():
    model = named_chain(["a", "b", "c"])
    a, b, c = (model.get_layer(n) for n in "abc")
    assert named(grouping.check_groups([a, [b, c]], "t", model=model)) == [["a"], ["b", "c"]]
    with pytest.raises(ValueError, match=r"'b/kernel' is in group 0 \(layer 'b'\) "
                       r"and again in group 1 \(layer 'b'\)"):
        grouping.check_groups([[a, b], [b, c]], "t", model=model)
    with pytest.raises(ValueError, match=r"leave out .*'b/kernel', 'b/bias'"):
        grouping.check_groups([[a], [c]], "t", model=model)
    other = layers.Dense(2, name="stranger")
    other.build((3,))
    # A layer of no model, or of another one: named, with what would do.
    with pytest.raises(ValueError, match="'stranger' in group 1 .*(not a trainable "
                       "variable|layer of another model)"):
        grouping.check_groups([[a, b], [other, c]], "t", model=model)
    with pytest.raises(ValueError, match="'dropout' in group 0 has no trainable"):
        grouping.check_groups([[layers.Dropout(0.1, name="dropout")]], "t")
    with pytest.raises(TypeError, match="group 1 must be a non-empty list"):
        grouping.check_groups([[a], []], "t")
    with pytest.raises(TypeError, match="group 0 must be a non-empty list"):
        grouping.check_groups([["a"]], "t")
    with pytest.raises(ValueError, match="list of groups is empty"):
        grouping.check_groups([], "t")
    with pytest.raises(TypeError, match="must be a list of groups"):
        grouping.check_groups(model, "t")
