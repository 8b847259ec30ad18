"""What layers declare on their variables, and which variables are claimed.

`difflr.layers` write a layer's own multipliers onto its variables when the
layer builds (`declare`); an `LRMultiplier` reads them as the rule of lowest
rank when it resolves its rule maps (`declared_lr`, `declared_decay`), and
marks every variable it is built for as claimed (`claim`).

A declaring layer that trains with unclaimed variables warns that nothing
reads its declaration, unless an `LRMultiplier` that is not built yet may
still claim them (`any_pending`): TensorFlow traces the forward pass of the
first step before the optimizer builds, in the same trace.

The layers and the optimizer both import this module, and neither imports
the other.
"""

import weakref

# Attributes set on `keras.Variable`s (in memory only: a saved layer keeps its
# declaration in its config and declares again when it builds).
_LR_ATTR = "_difflr_lr_multiplier"
_DECAY_ATTR = "_difflr_decay_multiplier"
_CLAIMED_ATTR = "_difflr_claimed"

_pending = weakref.WeakSet()


def declare(variable, lr=None, decay=None):
    """Writes a layer's declaration onto one of its variables."""
    if lr is not None:
        setattr(variable, _LR_ATTR, lr)
    if decay is not None:
        setattr(variable, _DECAY_ATTR, decay)


def declared_lr(variable):
    """The learning-rate multiplier `variable`'s layer declares, or None."""
    return getattr(variable, _LR_ATTR, None)


def declared_decay(variable):
    """The decay multiplier `variable`'s layer declares, or None."""
    return getattr(variable, _DECAY_ATTR, None)


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
