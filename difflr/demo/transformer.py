"""The transformer experiment: a KerasHub ViT on the digits, and its arms.

The same data and protocol as the CNN experiment (`experiment`), with a real
transformer in place of the CNN: `keras_hub.models.ViTBackbone` built from a
small config (8x8x1 images in 2x2 patches, so 16 patch tokens and a class
token; `LAYERS` encoder blocks of width `WIDTH`; random initialisation),
pretrained in-process on the pretraining half. The body is the backbone and
its class token's output; a model is the body plus a fresh `Dense` head.
`difflr.groups` splits it as a user's ViT classifier is split: the patch
embedding, each `transformer_block_<i>`, the final norm `ln`, the head.

The arms are the transformer recipes as a user writes them
(`catalog.TRANSFORMER_ARMS`): `difflr.layerwise_decay` with
`difflr.no_decay`, a linear probe, LP-FT, and KerasHub's
`backbone.enable_lora(rank)` with `difflr.lora_plus` at ratio 1 (LoRA) and 16
(LoRA+). Every arm trains with AdamW at a constant base rate (the head's
rate); `full` uses a plain `keras.optimizers.AdamW`, so that no difflr code
touches it.

This module has the interface of `network` (`build_body`, `build_model`,
`build_head`, `pretrain`, `accuracies`, `LOSS`) and an `ARMS` map like
`arms.ARMS`, which is how `experiment` runs it.
"""

import dataclasses
import functools

import keras

import difflr
from difflr.callbacks import GradualUnfreezing
from difflr.demo import arms as arms_lib
from difflr.demo import catalog
from difflr.demo import network

INPUT_SHAPE = network.INPUT_SHAPE
PATCH = 2
LAYERS = 3
WIDTH = 32
HEADS = 2
MLP_WIDTH = 64
LORA_RANK = 4
LORA_PLUS_RATIO = 16.0  # Hayou et al.'s default, PEFT's loraplus_lr_ratio
WEIGHT_DECAY = catalog.TRANSFORMER_WEIGHT_DECAY
BACKBONE = "backbone"  # the ViTBackbone's name inside the body

# The same head, loss and measurement as the CNN's.
LOSS = network.LOSS
build_head = network.build_head
accuracies = network.accuracies


def _keras_hub():
    try:
        import keras_hub
    except ImportError as e:
        raise ImportError(
            "The transformer experiment needs KerasHub for its ViT backbone. "
            "Install it with `pip install keras-hub`."
        ) from e
    return keras_hub


class _ClassToken(keras.layers.Layer):
    """The backbone's output at the class token: `sequence[:, 0]`."""

    def call(self, sequence):
        return sequence[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


def build_body():
    """A fresh, randomly initialised ViT body: backbone, class token."""
    backbone = _keras_hub().models.ViTBackbone(
        image_shape=INPUT_SHAPE, patch_size=PATCH, num_layers=LAYERS,
        num_heads=HEADS, hidden_dim=WIDTH, mlp_dim=MLP_WIDTH, name=BACKBONE)
    inputs = keras.Input(INPUT_SHAPE)
    features = _ClassToken(name="class_token_output")(backbone(inputs))
    return keras.Model(inputs, features, name="body")


build_model = network.build_model
pretrain = functools.partial(network.pretrain, build=build_body)


def backbone_of(model):
    """The `ViTBackbone` inside a model of `build_model`."""
    return model.get_layer("body").get_layer(BACKBONE)


def _adamw(lr):
    return keras.optimizers.AdamW(lr, weight_decay=WEIGHT_DECAY)


def _uniform(model, lr, epochs):
    return _adamw(lr), []


def _probe(model, lr, epochs):
    return difflr.LRMultiplier(_adamw(lr), {model.get_layer("body"): 0.0}), []


def _llrd(decay):
    def plan(model, lr, epochs):
        return difflr.LRMultiplier(
            _adamw(lr), difflr.layerwise_decay(model, decay=decay),
            decay_multipliers=difflr.no_decay(model)), []
    return plan


def _linear_probe_then_fine_tune(model, lr, epochs):
    # Kumar et al.'s LP-FT: the head alone, then every layer at once at the
    # base rate (gradual unfreezing whose groups all unfreeze together).
    # The probe is linear: the LayerNorms freeze too (fastai's default,
    # `train_bn=True`, would keep training them).
    schedule = [epochs // 2] * (len(difflr.groups(model)) - 1)
    unfreeze = GradualUnfreezing(schedule=schedule, train_bn=False)
    return difflr.LRMultiplier(_adamw(lr)), [unfreeze]


def _lora(ratio):
    def plan(model, lr, epochs):
        # Freezes the backbone but its attention's query and value layers,
        # which get the adapters; the head, outside it, still trains.
        backbone_of(model).enable_lora(LORA_RANK)
        return difflr.LRMultiplier(
            _adamw(lr), difflr.lora_plus(model, ratio=ratio)), []
    return plan


_PLANS = {
    "full": _uniform,
    "llrd0.8": _llrd(0.8),
    "llrd0.65": _llrd(0.65),
    "probe": _probe,
    "lp-ft": _linear_probe_then_fine_tune,
    "lora": _lora(1.0),
    "lora+": _lora(LORA_PLUS_RATIO),
}
ARMS = {info.name: arms_lib.Arm(*dataclasses.astuple(info), _PLANS[info.name])
        for info in catalog.TRANSFORMER_ARMS}
