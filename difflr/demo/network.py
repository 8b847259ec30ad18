"""The demo's network: a small CNN body, pretrained once per seed, and a head.

The body (about 38k parameters) is `conv1 -> conv2 -> flatten -> fc`, nested
as a sub-model named `body`; a model is the body plus a fresh `Dense` head.
`difflr.groups` splits it into four groups, bottom to head:
`[conv1], [conv2], [fc], [head]`.

The pretrained 10-way head is kept too: put back on a fine-tuned body (whose
features have moved, while the head has not), it measures how much of the
pretraining task the body still serves.
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


def build_head(weights):
    """A detached `Dense` head holding `weights` (kernel, bias), built."""
    kernel, _ = weights
    head = keras.layers.Dense(kernel.shape[1], name="pretrained_head")
    head.build((None, kernel.shape[0]))
    head.set_weights(weights)
    return head


def accuracies(body, heads, images, labels):
    """The accuracy of each head on its own images, from one pass of `body`.

    `heads[i]` classifies the body's features of `images[i]` against
    `labels[i]`. All the images go through the body as one eager batch: one
    call per run, with no per-batch Python loop and no tracing (compiling a
    predict function for each fresh model would cost more than the call).

    Returns:
        A list of floats, one per head.
    """
    features = keras.ops.convert_to_numpy(
        body(np.concatenate(images), training=False))
    sizes = [len(x) for x in images]
    ends = np.cumsum(sizes)
    scores = []
    for head, start, end, y in zip(heads, ends - sizes, ends, labels):
        logits = keras.ops.convert_to_numpy(head(features[start:end]))
        scores.append(float(np.mean(np.argmax(logits, axis=1) == y)))
    return scores


def pretrain(x, y, x_heldout, y_heldout, seed, epochs, batch_size=64,
             build=build_body):
    """Trains a fresh body with a 10-way head on `x` (shift-augmented).

    Plain Adam at 1e-3, `epochs` passes over the five shifted copies.
    `build` makes the fresh body (the transformer experiment's is a ViT).

    Returns:
        `(body_weights, head_weights, heldout_accuracy)`: the weights of the
        body and of the 10-way head (NumPy arrays), and the 10-way accuracy
        on `x_heldout`, to show what was learned.
    """
    keras.utils.set_random_seed(seed)
    body = build()
    model = build_model(body, data.CLASSES)
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    x_aug, y_aug = data.shift_augment(x, y)
    model.fit(x_aug, y_aug, batch_size=batch_size, epochs=epochs, verbose=0)
    head = model.get_layer("head")
    # The same computation as a fine-tuned body's retained accuracy.
    [heldout] = accuracies(body, [head], [x_heldout], [y_heldout])
    return body.get_weights(), head.get_weights(), heldout
