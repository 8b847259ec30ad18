"""Keras layers that declare their own learning-rate multipliers.

`difflr.layers.Dense(1024, kernel_lr_multiplier=0.1)` is `keras.layers.Dense`
whose kernel trains at a tenth of the base rate under a `difflr.LRMultiplier`.
The article's `W_learning_rate_multiplier` / `b_learning_rate_multiplier`
are accepted as aliases.
"""

import keras

from difflr.layers._declaring import declaring

Dense = declaring(keras.layers.Dense)
EinsumDense = declaring(keras.layers.EinsumDense)
Conv1D = declaring(keras.layers.Conv1D)
Conv2D = declaring(keras.layers.Conv2D)
Conv3D = declaring(keras.layers.Conv3D)
Conv1DTranspose = declaring(keras.layers.Conv1DTranspose)
Conv2DTranspose = declaring(keras.layers.Conv2DTranspose)
Conv3DTranspose = declaring(keras.layers.Conv3DTranspose)
DepthwiseConv1D = declaring(keras.layers.DepthwiseConv1D, "depthwise kernel")
DepthwiseConv2D = declaring(keras.layers.DepthwiseConv2D, "depthwise kernel")
SeparableConv1D = declaring(
    keras.layers.SeparableConv1D, "depthwise and pointwise kernels")
SeparableConv2D = declaring(
    keras.layers.SeparableConv2D, "depthwise and pointwise kernels")

__all__ = [
    "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
    "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
    "SeparableConv1D", "SeparableConv2D",
]
