"""The demo's network: a small CNN body, pretrained once per seed, and a head.

The body (about 38k parameters) is `conv1 -> conv2 -> flatten -> fc`, nested
as a sub-model named `body`; a model is the body plus a fresh `Dense` head.
`difflr.groups` splits it into four groups, bottom to head:
`[conv1], [conv2], [fc], [head]`.
"""

import keras
import numpy as np

from difflr.demo import data

INPUT_SHAPE = (8, 8, 1)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_body():
    """A fresh, randomly initialised body (the part that is pretrained)."""
    return keras.Sequential([
        keras.Input(INPUT_SHAPE),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                            name="conv1"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same",
                            activation="relu", name="conv2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, activation="relu", name="fc"),
    ], name="body")


def build_model(body, classes):
    """`body` followed by a fresh `Dense(classes)` head named `head`."""
    inputs = keras.Input(INPUT_SHAPE)
    outputs = keras.layers.Dense(classes, name="head")(body(inputs))
    return keras.Model(inputs, outputs, name="classifier")


def accuracy(model, x, y):
    """Fraction of `x` whose highest logit is the label `y`."""
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    return float(np.mean(np.argmax(logits, axis=1) == y))


def pretrain(x, y, x_heldout, y_heldout, seed, epochs, batch_size=64):
    """Trains a fresh body with a 10-way head on `x` (shift-augmented).

    Plain Adam at 1e-3, `epochs` passes over the five shifted copies.

    Returns:
        `(weights, heldout_accuracy)`: the body's weights (NumPy arrays) and
        the 10-way accuracy on `x_heldout`, to show what was learned.
    """
    keras.utils.set_random_seed(seed)
    body = build_body()
    model = build_model(body, data.CLASSES)
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    x_aug, y_aug = data.shift_augment(x, y)
    model.fit(x_aug, y_aug, batch_size=batch_size, epochs=epochs, verbose=0)
    return body.get_weights(), accuracy(model, x_heldout, y_heldout)
