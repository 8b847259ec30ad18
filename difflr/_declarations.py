"""What layers declare, and which variables are claimed.

A `difflr.layers` layer declares multipliers for its own weights: the bias
gets `bias_*_multiplier`, every other weight (kernel, depthwise and pointwise
kernels, and the LoRA factors `enable_lora` adds, which carry the kernel's
update) gets `kernel_*_multiplier`. The declaration belongs to the layer: an
`LRMultiplier` reads it from the layer each time it resolves its rule maps
(`declarations`), as the rule of lowest rank, whatever the layer's
`trainable` was when it was built, loaded or cloned. The layer that owns a
variable is found among the model's layers, or, when the model is not known,
through the mark each declaring layer leaves on its weights (`own`).

An `LRMultiplier` marks every variable it is built for as claimed (`claim`).
A declaring layer that trains with unclaimed variables warns that nothing
reads its declaration, unless an `LRMultiplier` that is not built yet may
still claim them (`any_pending`): TensorFlow traces the forward pass of the
first step before the optimizer builds, in the same trace.

The layers and the optimizer both import this module, and neither imports
the other.
"""

import weakref

from difflr import _keras_compat

# Attributes set on layers and `keras.Variable`s, in memory only: a saved
# layer keeps its declaration in its config and marks its weights again when
# it builds.
_DECLARING_ATTR = "_difflr_declares"
_OWNER_ATTR = "_difflr_declaring_layer"  # a weak reference to the layer
_CLAIMED_ATTR = "_difflr_claimed"

_pending = weakref.WeakSet()


def own(layer, variables):
    """Marks `layer` as declaring, and `variables` as its weights."""
    setattr(layer, _DECLARING_ATTR, True)
    owner = weakref.ref(layer)
    for variable in variables:
        setattr(variable, _OWNER_ATTR, owner)


def _declared(layer, variable):
    """`(lr, decay)` that `layer` declares for its weight `variable`."""
    part = "bias" if variable is getattr(layer, "bias", None) else "kernel"
    return (getattr(layer, f"{part}_lr_multiplier", None),
            getattr(layer, f"{part}_decay_multiplier", None))


class Declarations:
    """The declarations in force for some variables, read from their layers.

    `lr(variable)` and `decay(variable)` give the multiplier the owning
    layer declares, or None.
    """

    def __init__(self, variables, model=None):
        self._owner = {}  # id(variable) -> declaring layer
        if model is not None:
            # Every weight a declaring layer of the model holds now, LoRA
            # factors and variables made after build included.
            for layer in _keras_compat.nested_layers(model):
                if getattr(layer, _DECLARING_ATTR, False):
                    for v in layer.weights:
                        self._owner.setdefault(id(v), layer)
        for v in variables:
            if id(v) not in self._owner:
                ref = getattr(v, _OWNER_ATTR, None)
                layer = None if ref is None else ref()
                if layer is not None:
                    self._owner[id(v)] = layer

    def _get(self, variable, which):
        layer = self._owner.get(id(variable))
        return None if layer is None else _declared(layer, variable)[which]

    def lr(self, variable):
        return self._get(variable, 0)

    def decay(self, variable):
        return self._get(variable, 1)


def expect(optimizer):
    """Registers an optimizer that will claim variables when it builds."""
    _pending.add(optimizer)


def claim(optimizer, variables):
    """Marks `variables` as trained by `optimizer`, which is now built."""
    for variable in variables:
        setattr(variable, _CLAIMED_ATTR, True)
    _pending.discard(optimizer)


def claimed(variable):
    """Whether an `LRMultiplier` was built for `variable`."""
    return getattr(variable, _CLAIMED_ATTR, False)


def any_pending():
    """Whether some `LRMultiplier` may still claim variables when it builds."""
    return len(_pending) > 0
