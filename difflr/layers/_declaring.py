"""Layers that declare their own learning-rate multipliers (Caffe's lr_mult).

Each class here is a drop-in subclass of the Keras layer of the same name with
four more arguments. The declaration belongs to the layer: an `LRMultiplier`
reads it from the layer whenever it resolves its rules, with no rule map at
all (an explicit rule given to the optimizer wins over a declaration), for
every weight of the layer that trains, however and whenever the layer was
built, frozen, unfrozen, cloned or loaded.
"""

import functools
import inspect
import warnings

import keras

from difflr import _declarations
from difflr import _rules

_ARGS = ("kernel_lr_multiplier", "bias_lr_multiplier",
         "kernel_decay_multiplier", "bias_decay_multiplier")
# The article's (Keras 2 era) names, accepted as aliases.
_ALIASES = {"W_learning_rate_multiplier": "kernel_lr_multiplier",
            "b_learning_rate_multiplier": "bias_lr_multiplier"}


class DeclaresMultipliers:
    """Mixin: stores the four multiplier arguments and marks the weights."""

    def __init__(self, *args, **kwargs):
        declared = {name: kwargs.pop(name, None) for name in _ARGS}
        for alias, name in _ALIASES.items():
            value = kwargs.pop(alias, None)
            if value is None:
                continue
            if declared[name] is not None and declared[name] != value:
                raise ValueError(
                    f"{type(self).__name__} got both {name}={declared[name]} "
                    f"and its alias {alias}={value}; give only one."
                )
            declared[name] = value
        super().__init__(*args, **kwargs)
        for name, value in declared.items():
            if value is not None:
                value = _rules.check_value(
                    value, name.replace("_", " "), f"layer '{self.name}'")
            setattr(self, name, value)
        self._difflr_warned = False

    def build(self, input_shape):
        super().build(input_shape)
        # All weights, trainable or not: a layer built frozen (or loaded from
        # a file saved frozen) and unfrozen later trains at its declaration.
        _declarations.own(self, self.weights)

    def call(self, inputs, training=None):
        if training and not self._difflr_warned:
            self._warn_if_unclaimed()
        if _takes_training(type(self)):
            return super().call(inputs, training=training)
        return super().call(inputs)

    def _warn_if_unclaimed(self):
        declares = any(getattr(self, name) is not None for name in _ARGS)
        claimed = all(_declarations.claimed(v) for v in self.trainable_variables)
        if not claimed and _declarations.any_pending():
            return  # an LRMultiplier may build later in this very step: ask again
        self._difflr_warned = True
        if declares and not claimed:
            warnings.warn(
                f"Layer '{self.name}' declares learning-rate multipliers, but "
                "it is training under an optimizer that is not a "
                "difflr.LRMultiplier, which ignores them. Compile with "
                "`optimizer=difflr.LRMultiplier(...)`. (In a custom training "
                "loop, call `optimizer.build(model.trainable_variables)` "
                "before the first step to silence this.)",
                stacklevel=2,
            )

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in _ARGS})
        return config


def _takes_training(cls):
    for base in cls.__mro__:
        if base is not cls and "call" in vars(base) and base is not DeclaresMultipliers:
            return "training" in inspect.signature(base.call).parameters
    return False


def _owning_lora_factors(keras_enable_lora):
    """`enable_lora` that marks the new LoRA factors as the layer's. They
    carry the kernel's update, so they get the kernel's declaration (the
    kernel itself is frozen by `enable_lora`)."""

    @functools.wraps(keras_enable_lora)
    def enable_lora(self, *args, **kwargs):
        result = keras_enable_lora(self, *args, **kwargs)
        _declarations.own(self, self.weights)
        return result

    return enable_lora


def _init_with_signature(base, namespace):
    """`DeclaresMultipliers.__init__` showing `base`'s arguments plus the
    four multipliers (keyword-only, as it pops them from `**kwargs`), so
    that `inspect.signature`, `help()` and the API reference see the real
    arguments instead of `*args, **kwargs`. It is named as a method of the
    class `namespace` makes (Griffe looks methods up by name)."""

    def __init__(self, *args, **kwargs):
        DeclaresMultipliers.__init__(self, *args, **kwargs)

    params = list(inspect.signature(base.__init__).parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD),
              len(params))
    ours = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
            for name in _ARGS]
    __init__.__signature__ = inspect.Signature(params[:at] + ours + params[at:])
    __init__.__module__ = namespace["__module__"]
    __init__.__qualname__ = f"{namespace['__qualname__']}.__init__"
    return __init__


def declaring(base, kernel_words="kernel"):
    """The `difflr.layers` counterpart of the Keras layer class `base`."""
    name = base.__name__
    namespace = {
        "__module__": "difflr.layers",
        "__qualname__": name,
        "__doc__": _DOC.format(name=name, kernel=kernel_words),
    }
    if hasattr(base, "enable_lora"):
        # Only where Keras has it, so that `hasattr(layer, "enable_lora")`
        # stays what it is for the Keras layer.
        namespace["enable_lora"] = _owning_lora_factors(base.enable_lora)
    namespace["__init__"] = _init_with_signature(base, namespace)
    cls = type(name, (DeclaresMultipliers, base), namespace)
    return keras.saving.register_keras_serializable(package="difflr")(cls)


_DOC = """`keras.layers.{name}` with its own learning-rate multipliers.

    A drop-in subclass of `keras.layers.{name}`: it takes every argument of
    that layer, plus the four keyword arguments below (all four default to
    `None`: no declaration). A `difflr.LRMultiplier` optimizer picks
    the values up with no rule map; an explicit rule given to the optimizer
    wins over them. With any other optimizer they have no effect, and the
    layer warns when it trains.

    The declaration is the layer's: it applies whenever the layer's weights
    train, also if the layer was built with `trainable=False` (or loaded
    from a file saved frozen) and unfrozen later. The bias gets the bias
    multipliers; every other weight, including the LoRA factors
    `enable_lora` adds (they carry the kernel's update), gets the kernel
    multipliers.

    Args:
        kernel_lr_multiplier (float | None): The learning-rate multiplier of
            the {kernel}, a non-negative number. `W_learning_rate_multiplier`
            is accepted as an alias (the Keras 2 article's name).
        bias_lr_multiplier (float | None): The learning-rate multiplier of the
            bias, a non-negative number (alias `b_learning_rate_multiplier`).
        kernel_decay_multiplier (float | None): The weight-decay multiplier of
            the {kernel}, a non-negative number (Caffe's `decay_mult`).
        bias_decay_multiplier (float | None): The weight-decay multiplier of
            the bias, a non-negative number.
        **kwargs (Any): The arguments every Keras layer takes (`name`,
            `dtype`, `trainable`, ...), as for `keras.layers.{name}`.

    Example:

    >>> import keras, difflr
    >>> layer = difflr.layers.Dense(4, kernel_lr_multiplier=0.1,
    ...                             bias_lr_multiplier=0.2)
    >>> model = keras.Sequential([keras.Input((3,)), layer])
    >>> opt = difflr.LRMultiplier("sgd")
    >>> model.compile(optimizer=opt, loss="mse")
    >>> opt.build(model.trainable_variables)
    >>> opt.multiplier_for(layer.kernel), opt.multiplier_for(layer.bias)
    (0.1, 0.2)
    """
