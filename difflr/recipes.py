"""Rule maps for the classic fine-tuning recipes.

Each function returns a rule map for `difflr.LRMultiplier`: a dict from layers
to multipliers, one entry per layer of each group (see `difflr.groups`), so it
can be merged with rules of your own.

- `discriminative`: fastai / ULMFiT discriminative learning rates.
- `layerwise_decay`: BEiT / ELECTRA / timm layer-wise learning-rate decay.
- `no_decay`: decay multipliers of 0 for biases, norms, embeddings, tokens.
"""

import re

import keras

from difflr import _checks
from difflr import _keras_compat
from difflr import _rules
from difflr import grouping


def discriminative(groups, lr=None, factor=None):
    """Discriminative learning-rate multipliers (fastai, ULMFiT).

    Lower groups train slower than the head. With `n` groups, group `i`
    (0 = bottom, `n - 1` = head) gets the multiplier `m_i`, the head always
    exactly 1.0, and the optimizer's base rate is the head's rate `hi`:

    - `lr=slice(lo, hi)`: geometric from `lo / hi` (bottom) to 1 (head), as
      fastai's `even_mults(lo, hi, n) / hi`:

          m_i = (lo / hi) ** ((n - 1 - i) / (n - 1))

    - `lr=slice(hi)`: every group but the head at 0.1 (fastai: body at
      `hi / 10`), `m_i = 0.1` for `i < n - 1`.
    - `factor=f` (ULMFiT uses 2.6): each group `f` times slower than the one
      above it, `m_i = f ** -(n - 1 - i)`.

    Unlike fastai, one group gets 1.0 (no division by zero), and
    `slice(0, hi)` is an error rather than silently meaning `slice(hi)`: no
    geometric spacing starts at 0.

    Give the optimizer the head's rate `hi` as its learning rate (with
    `factor`, whatever rate the head should train at); every group then trains
    at `hi * m_i`, and learning-rate schedules keep the ratios.

    Args:
        groups (keras.Model | list): A model (split with
            `difflr.groups(model)`) or a list of groups, bottom to head, each a
            list of layers (or a single layer). With a list, variables in no
            group keep their default multiplier 1.0: `difflr.groups(model)`
            covers every trainable variable. `i` and `n` are the groups' layer
            ids as `difflr.groups` gives them (frozen groups keep their place,
            so freezing before or after gives the other groups the same rates);
            a list without `layer_ids` counts as `0..n-1`.
        lr (slice | None): A `slice(lo, hi)` with `0 < lo <= hi`, or
            `slice(hi)` with `hi > 0`.
        factor (float | None): A number >= 1: the ratio between consecutive
            groups. Exactly one of `lr` and `factor` must be given.

    Returns:
        dict[keras.layers.Layer, float]: `{layer: multiplier}` covering every
        layer of every group.

    Raises:
        TypeError: if the groups are malformed, `lr` is not a slice, or
            `factor` is not a number.
        ValueError: if both or neither of `lr` and `factor` are given, if
            `lo <= 0`, `lo > hi`, `factor < 1`, or a variable is in two
            groups.

    Example:

    >>> import keras, difflr
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(8, name="body1")(inputs)
    >>> x = keras.layers.Dense(8, name="body2")(x)
    >>> outputs = keras.layers.Dense(1, name="head")(x)
    >>> model = keras.Model(inputs, outputs)
    >>> rules = difflr.discriminative(model, lr=slice(1e-4, 1e-2))
    >>> {layer.name: round(m, 6) for layer, m in rules.items()}
    {'body1': 0.01, 'body2': 0.1, 'head': 1.0}
    >>> rules = difflr.discriminative(model, factor=2.6)
    >>> {layer.name: round(m, 4) for layer, m in rules.items()}
    {'body1': 0.1479, 'body2': 0.3846, 'head': 1.0}
    >>> model.compile(difflr.LRMultiplier(keras.optimizers.Adam(1e-2), rules),
    ...               loss="mse")
    """
    who = "difflr.discriminative"
    layer_groups = _groups_of(groups, who)
    layer_ids, n = _layer_ids(groups, layer_groups)
    if (lr is None) == (factor is None):
        raise ValueError(
            f"{who}: give exactly one of `lr=slice(lo, hi)` (or `slice(hi)`) "
            f"and `factor=` (e.g. 2.6); received lr={lr!r}, factor={factor!r}."
        )
    if factor is not None:
        # factor < 1 would train the bottom faster than the head: not this
        # recipe (write that rule map by hand).
        factor = _checks.number(factor, "factor", who, low=1)
        multipliers = [factor ** -(n - 1 - i) for i in range(n)]
    else:
        multipliers = _slice_multipliers(lr, n, who)
    return _rule_map(layer_groups, [multipliers[i] for i in layer_ids])


def _slice_multipliers(lr, n, who):
    if not isinstance(lr, slice):
        raise TypeError(
            f"{who}: `lr` must be a `slice(lo, hi)` (geometric from lo to hi) "
            f"or `slice(hi)` (body at hi/10); received {lr!r}. A single rate "
            "for every group needs no multipliers: set it on the optimizer."
        )
    if lr.step is not None or lr.stop is None:
        raise ValueError(
            f"{who}: `lr` must be `slice(lo, hi)` or `slice(hi)`; received "
            f"{lr!r}."
        )
    hi = _checks.number(lr.stop, "hi (lr.stop)", who, low=0, low_open=True)
    if lr.start is None:  # fastai's slice(hi): body at hi / 10
        return [0.1] * (n - 1) + [1.0]
    lo = _checks.number(lr.start, "lo (lr.start)", who)
    if lo <= 0:
        raise ValueError(
            f"{who}: in `slice(lo, hi)`, `lo` must be > 0: rates cannot be "
            f"spaced geometrically from {lo}. Received {lr!r}. Use "
            "`slice(hi)` for every group but the head at hi/10, or a small "
            "positive lo."
        )
    if lo > hi:
        raise ValueError(
            f"{who}: in `slice(lo, hi)`, `lo` (the bottom group's rate) must "
            f"be <= `hi` (the head's); received {lr!r}."
        )
    if n == 1:
        return [1.0]
    return [(lo / hi) ** ((n - 1 - i) / (n - 1)) for i in range(n)]


def _groups_of(groups, who):
    """The groups of a model, or a list of groups checked."""
    if isinstance(groups, (list, tuple)):
        return grouping.check_groups(groups, who)
    if not isinstance(groups, keras.layers.Layer):
        raise TypeError(
            f"{who}: `groups` must be a Keras model (split with "
            "`difflr.groups`) or a list of groups, each a list of layers; "
            f"received {groups!r} of type {type(groups).__name__}."
        )
    grouping.check_model(groups, who)
    return grouping.groups(groups)


def _layer_ids(given, layer_groups):
    """Each group's layer id and the number of ids: those `difflr.groups`
    gives (frozen groups keep their place, so freezing before or after
    making the rules changes no rate), else `0..n-1` and `n`."""
    ids = getattr(given, "layer_ids", None)
    total = getattr(given, "num_layer_ids", None)
    if isinstance(given, keras.layers.Layer) or ids is None:
        ids = getattr(layer_groups, "layer_ids", None)
        total = getattr(layer_groups, "num_layer_ids", None)
    n = len(layer_groups)
    # Ids that do not fit the groups given (a list edited after
    # `difflr.groups`) are not guessed from: count the groups as given.
    if (ids is None or not isinstance(total, int) or len(ids) != n
            or list(ids) != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= total):
        return list(range(n)), n
    return list(ids), total


def _rule_map(layer_groups, multipliers):
    return {layer: float(m)
            for group, m in zip(layer_groups, multipliers) for layer in group}


def layerwise_decay(model, decay=0.75, min_multiplier=None, groups=None):
    """Layer-wise learning-rate decay (BEiT, ELECTRA, timm's LLRD).

    Each group trains `decay` times slower than the group above it: with
    `n` groups (0 = bottom, `n - 1` = head), group `i` gets

        m_i = max(min_multiplier, decay ** (n - 1 - i))

    This is timm's `param_groups_layer_decay`, the group indices being its
    layer ids (timm also numbers its groups consecutively and gives the last
    one 1.0). On a KerasHub-style backbone split by `difflr.groups`
    (embeddings, `L` blocks `transformer_layer_0..L-1`, final norm) the
    embeddings (id 0) get `decay ** (L + 1)`, `transformer_layer_k` (id
    `k + 1`) gets `decay ** (L - k)` and the final norm (id `L + 1`) 1.0.
    With a classifier on top, the classifier is id `L + 2` at 1.0 and
    everything below moves down one step, as timm's ViT (final norm and head
    apart). The optimizer's base rate is the head's rate.

    `i` and `n` are the layer ids of `difflr.groups(model)`, which count
    the groups of frozen layers too (`layer_ids`, `num_layer_ids`): a layer
    frozen before or after this call (`trainable=False`, or KerasHub's
    `backbone.enable_lora`, which freezes the embeddings) leaves every
    other group at the same rate. The frozen groups get no rule.

    Args:
        model (keras.Model): A built Keras model.
        decay (float): The ratio between consecutive groups, `0 < decay <= 1`
            (BEiT uses 0.65 to 0.75 for base models).
        min_multiplier (float | None): Optional floor for the multipliers, in
            `[0, 1]` (timm's `min_scale`). Defaults to no floor.
        groups (list | None): Optional list of groups, bottom to head, each a
            list of layers (or a single layer), covering every trainable
            variable of `model` exactly once. Defaults to
            `difflr.groups(model)`. A list given here counts as `0..n-1` unless
            it carries `layer_ids` (as `difflr.groups` returns).

    Returns:
        dict[keras.layers.Layer, float]: `{layer: multiplier}` covering every
        layer of every group.

    Raises:
        TypeError: if `model` is not a Keras model or the groups are
            malformed.
        ValueError: if `decay` or `min_multiplier` is out of range, if the
            model is not built, or if the groups leave out a trainable
            variable of the model or hold one twice.

    Example:

    >>> import keras, difflr
    >>> inputs = keras.Input((4,), dtype="int32")
    >>> x = keras.layers.Embedding(50, 8, name="token_embedding")(inputs)
    >>> for i in range(3):
    ...     x = keras.layers.Dense(8, name=f"transformer_layer_{i}")(x)
    >>> outputs = keras.layers.LayerNormalization(name="final_norm")(x)
    >>> model = keras.Model(inputs, outputs)
    >>> rules = difflr.layerwise_decay(model, decay=0.5)
    >>> {layer.name: m for layer, m in rules.items()}
    {'token_embedding': 0.0625, 'transformer_layer_0': 0.125, \
'transformer_layer_1': 0.25, 'transformer_layer_2': 0.5, 'final_norm': 1.0}
    >>> opt = difflr.LRMultiplier(keras.optimizers.AdamW(1e-3), rules,
    ...                           decay_multipliers=difflr.no_decay(model))
    """
    who = "difflr.layerwise_decay"
    grouping.check_model(model, who)
    decay = _checks.number(decay, "decay", who, low=0, low_open=True, high=1)
    floor = 0.0
    if min_multiplier is not None:
        floor = _checks.number(min_multiplier, "min_multiplier", who, low=0, high=1)
    if groups is None:
        layer_groups = grouping.groups(model)
    else:
        layer_groups = grouping.check_groups(groups, who, model=model)
    layer_ids, n = _layer_ids(groups, layer_groups)
    return _rule_map(layer_groups,
                     [max(floor, decay ** (n - 1 - i)) for i in layer_ids])


# Variable names (the last part of the path) that timm, BEiT and KerasHub
# keep out of weight decay: class/distillation/mask/register tokens and
# position embeddings.
_NO_DECAY_NAME = re.compile(
    r"(?:cls|class|dist|distillation|mask|register)_tokens?"
    r"|pos(?:ition(?:al)?)?_embed(?:ding)?s?|embeddings?"
)


def no_decay(model):
    """Decay multipliers of 0 for biases, norms, embeddings and tokens.

    The usual exclusions from weight decay (timm's
    `param_groups_weight_decay`, BERT, BEiT): a variable gets decay
    multiplier 0 if

    - it is a bias (named `bias`, whatever its shape) or has at most one
      dimension (`ndim <= 1`: norm scales and offsets, layer scales), or
    - it belongs to a normalization layer (`BatchNormalization`,
      `LayerNormalization`, `GroupNormalization`, `RMSNormalization`) or an
      `Embedding` layer, or
    - it is named like a token or a position embedding: `cls_token`,
      `class_token`, `dist_token`, `mask_token`, `register_tokens`,
      `pos_embed`, `position_embedding(s)`, `embeddings`.

    Everything else (kernels, patch-embedding convs) keeps the optimizer's
    weight decay. Use it as `decay_multipliers` of `difflr.LRMultiplier`
    with an optimizer that has `weight_decay` (AdamW, or any Keras optimizer
    given `weight_decay=`).

    The keys are the normalization and embedding layers, and the exact paths
    of the other variables (a regular expression matching them all when
    sub-models repeat a path). Rules you merge in follow the usual
    precedence: a layer rule of yours beats a path key here. Made from the
    model before `keras.models.load_model` or `clone_model`, the map works
    on the rebuilt one: its layers stand for their counterparts, and its
    paths for the variables Keras renamed (`sequential/dense/bias` loads as
    `dense/bias`).

    Args:
        model (keras.Model): A built Keras model.

    Returns:
        dict[keras.layers.Layer | str, float]: A map from layers and variable
        paths to 0.0.

    Raises:
        TypeError: if `model` is not a Keras model.
        ValueError: if the model is not built or has no trainable variables,
            or if two variables share a path and only one of them is to be
            excluded (rename the layers).

    Example:

    >>> import keras, difflr
    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(8, name="dense")(inputs)
    >>> outputs = keras.layers.LayerNormalization(name="norm")(x)
    >>> model = keras.Model(inputs, outputs)
    >>> rules = difflr.no_decay(model)
    >>> [getattr(key, "name", key) for key in rules]
    ['dense/bias', 'norm']
    >>> opt = difflr.LRMultiplier(keras.optimizers.AdamW(1e-3, weight_decay=0.05),
    ...                           decay_multipliers=rules)
    """
    who = "difflr.no_decay"
    grouping.check_model(model, who)
    whole = {}  # id(variable) -> its normalization or embedding layer
    for layer in _keras_compat.nested_layers(model):
        if isinstance(layer, grouping.NORMALIZATION_LAYERS + (keras.layers.Embedding,)):
            for v in layer.trainable_variables:
                whole.setdefault(id(v), layer)
    variables = model.trainable_variables
    excluded = {
        id(v) for v in variables
        if id(v) in whole or v.name == "bias" or len(v.shape) <= 1
        or _NO_DECAY_NAME.fullmatch(v.name)
    }
    by_path = {}
    for v in variables:
        by_path.setdefault(v.path, []).append(v)
    rules = {}
    for v in variables:
        if id(v) not in excluded:
            continue
        if id(v) in whole:
            rules[whole[id(v)]] = 0.0
            continue
        twins = by_path[v.path]
        if len(twins) == 1:
            rules[v.path] = 0.0
        elif all(id(t) in excluded for t in twins):
            # An exact path naming several variables is an error for the
            # resolver; a regular expression may match them all (a twin in a
            # normalization layer gets 0 from its layer key anyway).
            rules[f"(?:{re.escape(v.path)})"] = 0.0
        else:
            raise ValueError(
                f"{who}: {len(twins)} trainable variables share the path "
                f"'{v.path}' and only some of them are to be kept out of "
                "weight decay, so no path rule can tell them apart. Give the "
                "layers of the sub-models distinct names."
            )
    return rules


# LoRA+: the factors Keras's `enable_lora` adds, by variable name. `A` maps
# the input to the rank, `B` (initialized to zeros) the rank to the output.
_LORA_A = ("lora_kernel_a", "lora_embeddings_a")
_LORA_B = ("lora_kernel_b", "lora_embeddings_b")
_LORA_EMBEDDINGS = ("lora_embeddings_a", "lora_embeddings_b")
_LORA_PLUS = "difflr.lora_plus"


def lora_plus(model, ratio=16.0, lr=1.0, embedding_lr=None, base=None):
    """LoRA+ multipliers for Keras's LoRA (Hayou et al., 2024).

    LoRA+ trains the `B` matrix of each LoRA pair `ratio` times faster than
    its `A` matrix. Keras's `layer.enable_lora(rank)` (on `Dense`,
    `EinsumDense`, `Embedding` and the convolutions; `backbone.enable_lora(
    rank)` on a KerasHub backbone) adds `lora_kernel_a` / `lora_kernel_b`
    (`lora_embeddings_a` / `lora_embeddings_b` on `Embedding`), where `B`
    maps the rank to the outputs and starts at zero. With `b(v)` the base
    multiplier of a variable (from `base`, 1.0 without it):

        lora_*_a:  b(v) * lr
        lora_*_b:  b(v) * lr * ratio
        every other trainable variable: b(v) (untouched without `base`)

    This follows PEFT's `create_loraplus_optimizer(model, optimizer_cls,
    lr=..., loraplus_lr_ratio=...)`, with the rates as multiples of the
    optimizer's base rate: `lr` here is PEFT's `lr` divided by the base rate
    (1.0: the A matrices train at the optimizer's rate, PEFT's usual setup),
    and `ratio` is PEFT's `loraplus_lr_ratio`. Where difflr differs:

    - 1-D parameters: PEFT puts every trainable 1-D parameter (biases, norm
      scales) in its `B` group, at `lr * ratio`. LoRA+'s analysis is about
      the `B` matrices only, so here 1-D variables keep their base
      multiplier. For PEFT's grouping, add path or layer rules for them to
      the returned map (they win over it), e.g.
      `{**difflr.lora_plus(model), ".*bias": 16.0}`.
    - LoRA on embeddings: PEFT gives both factors of a LoRA `Embedding` one
      absolute rate, `loraplus_lr_embedding` (1e-6 by default), because
      PEFT initializes the embedding's `A` to zero. Keras initializes
      `lora_embeddings_b` to zero, like every other `B`, so by default the
      embeddings follow the same rule as the kernels. `embedding_lr=m`
      gives both embedding factors multiplier `b(v) * m` instead, PEFT's
      behaviour as a multiple of the base rate (PEFT's 1e-6 at base rate
      `r` is `embedding_lr=1e-6 / r`).
    - Weight decay: PEFT's `loraplus_weight_decay` is the optimizer's
      `weight_decay` here, with `decay_multipliers` such as
      `difflr.no_decay(model)` (which keeps decay on the 2-D LoRA matrices,
      except those of `Embedding` layers, whose variables it all excludes).

    The returned map has one rule, a callable over the variables' names that
    resolves when the optimizer is built (`compile`/`fit`), so LoRA may be
    enabled before or after `lora_plus` is called, as long as it is before
    the optimizer is built. A LoRA variable created after that has no
    optimizer state: compile again with a new `difflr.LRMultiplier`.

    Composing: a callable is the least specific kind of rule, so a layer
    rule (from `discriminative` or `layerwise_decay`) merged next to it would
    win on the LoRA variables of its layers, and A and B would train at one
    rate. Pass such a map as `base=` instead: its multipliers then scale the
    LoRA ones (LoRA+ inside each layer-wise group) and apply unchanged to the
    other variables. Rules you add to the returned map take precedence over
    it, as usual. `difflr.no_decay(model)` goes to `decay_multipliers`, which
    is a separate map.

    On a KerasHub backbone, `backbone.enable_lora` sets `trainable=False` on
    every layer but the LoRA ones; `difflr.groups`, the recipes and layer
    rules still follow the blocks, through the weights that train inside
    them, so `base` may be made before or after it.

    The map may be made from the model before `keras.models.load_model` or
    `clone_model` and used on the rebuilt one: its model and `base` layers
    stand for their counterparts there (the one layer with the same name,
    class and variable shapes); where there is none or several (LoRA enabled
    on one model only: KerasHub saves no LoRA in a `.keras` file), building
    the optimizer raises, saying so.

    Args:
        model (keras.Model | keras.layers.Layer): The Keras model (or layer)
            whose LoRA variables to scale.
        ratio (float): The ratio of the `B` matrices' rate to the `A`
            matrices', a number > 0 (the paper and PEFT suggest 16 as a start;
            1 is plain LoRA). Defaults to 16.
        lr (float): The multiplier of the `A` matrices, a number >= 0. Defaults
            to 1.
        embedding_lr (float | None): Optional multiplier for both factors of
            LoRA `Embedding` layers (PEFT's `loraplus_lr_embedding`, relative
            to the base rate). Defaults to `None`: the same rule as the
            kernels.
        base (dict | list | None): Optional rule map (a dict or a list of
            pairs) whose keys are layers, as `discriminative` and
            `layerwise_decay` return: each variable gets the multiplier of the
            innermost layer covering it, and its LoRA factors are scaled by it.

    Returns:
        dict[Callable, None]: A rule map with a single key, a callable rule,
        for `difflr.LRMultiplier`.

    Raises:
        TypeError: if `model` is not a Keras layer or model, a number is not
            a number, or `base` holds a key that is not a layer.
        ValueError: if a number is out of range, or (when the optimizer is
            built, or previewed with `difflr.summary`) if the model has no
            LoRA variables among its trainable variables, or if the map was
            made from another model and its model or a `base` layer has no
            one counterpart in the model trained.

    Example:

    >>> import keras, difflr
    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(8, name="body")(inputs)
    >>> outputs = keras.layers.Dense(1, name="head")(x)
    >>> model = keras.Model(inputs, outputs)
    >>> rules = difflr.lora_plus(model, ratio=16)
    >>> model.get_layer("body").enable_lora(2)  # before or after lora_plus
    >>> opt = difflr.LRMultiplier(keras.optimizers.Adam(1e-4), rules)
    >>> opt.build(model.trainable_variables)  # as compile/fit would
    >>> body = model.get_layer("body")
    >>> [opt.multiplier_for(v) for v in (body.lora_kernel_a, body.lora_kernel_b)]
    [1.0, 16.0]
    >>> opt.multiplier_for(body.bias), opt.multiplier_for(model.get_layer("head").kernel)
    (1.0, 1.0)
    >>> rules = difflr.lora_plus(model, base=difflr.discriminative(model, factor=2))
    >>> opt = difflr.LRMultiplier(keras.optimizers.Adam(1e-4), rules)
    >>> opt.build(model.trainable_variables)
    >>> [opt.multiplier_for(v) for v in (body.lora_kernel_a, body.lora_kernel_b, body.bias)]
    [0.5, 8.0, 0.5]
    """
    who = _LORA_PLUS
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"{who}: `model` must be a Keras model or layer; received "
            f"{model!r} of type {type(model).__name__}."
        )
    ratio = _checks.number(ratio, "ratio", who, low=0, low_open=True)
    lr = _checks.number(lr, "lr", who, low=0)
    if embedding_lr is not None:
        embedding_lr = _checks.number(embedding_lr, "embedding_lr", who, low=0)
    base_layers = _base_layers(base, who)
    return {_LoRAPlusRule(model, ratio, lr, embedding_lr, base_layers): None}


def _base_layers(base, who):
    """The `(layer, multiplier)` pairs of a `base=` rule map, checked."""
    if base is None:
        return []
    if isinstance(base, dict):
        items = list(base.items())
    elif isinstance(base, (list, tuple)) and all(
            isinstance(item, (list, tuple)) and len(item) == 2 for item in base):
        items = [tuple(item) for item in base]
    else:
        raise TypeError(
            f"{who}: `base` must be a rule map (a dict, or a list of (layer, "
            "multiplier) pairs) such as `difflr.layerwise_decay(model)` "
            f"returns; received {type(base).__name__}."
        )
    pairs = []
    for key, value in items:
        if not isinstance(key, keras.layers.Layer):
            raise TypeError(
                f"{who}: the keys of `base` must be layers (as "
                "`difflr.discriminative` and `difflr.layerwise_decay` return); "
                f"received {key!r} of type {type(key).__name__}. Add rules of "
                "other kinds to the map lora_plus returns instead: they take "
                "precedence over it, e.g. `{**difflr.lora_plus(model, "
                "base=...), 'head/bias': 2.0}`."
            )
        name = f"the `base` multiplier of layer '{key.name}'"
        pairs.append((key, _checks.number(value, name, who, low=0)))
    return pairs


class _LoRAPlusRule:
    """The callable rule `lora_plus` returns: `variable -> multiplier|None`.

    Resolved when the optimizer is built, from the variables' names and the
    `base` layers' variables at that time; `difflr.summary(expand=True)`
    shows it by its `__name__`.
    """

    def __init__(self, model, ratio, lr, embedding_lr, base_layers):
        self.model, self.ratio, self.lr = model, ratio, lr
        self.embedding_lr = embedding_lr
        self.base_layers = base_layers
        self.__name__ = f"lora_plus(ratio={ratio:g})"
        self._has_lora = False
        self._base_cache = {}  # id(variable) -> (variable, base multiplier|None)

    def difflr_for_model(self, model, variables):
        """This rule for `model` (None if unknown), whose trainable
        `variables` are being resolved: the model and `base` layers it was
        made with may be another model's (the one before `load_model` or
        `clone_model`); their one counterparts in `model` stand for them."""
        own = _rules.Ownership(model, variables)
        mapped = own.layer(self.model, f"{_LORA_PLUS}: the model "
                           f"'{self.model.name}' it was made with")
        base = [(own.layer(layer, f"{_LORA_PLUS}: the `base` layer "
                           f"'{layer.name}' ({type(layer).__name__})"), m)
                for layer, m in self.base_layers]
        if mapped is self.model and all(
                old is new for (old, _), (new, _) in zip(self.base_layers, base)):
            return self  # keeps its cache
        return _LoRAPlusRule(mapped, self.ratio, self.lr, self.embedding_lr, base)

    def __call__(self, variable):
        name = variable.name
        if name in _LORA_A or name in _LORA_B:
            self._has_lora = True
            m = self._base(variable)
            m = 1.0 if m is None else m
            if self.embedding_lr is not None and name in _LORA_EMBEDDINGS:
                return m * self.embedding_lr
            return m * self.lr * (self.ratio if name in _LORA_B else 1.0)
        if not self._has_lora:
            self._check_has_lora()
        return self._base(variable)

    def _check_has_lora(self):
        # Once seen, LoRA stays (Keras cannot disable it on a layer).
        if any(v.name in _LORA_A + _LORA_B for v in self.model.trainable_variables):
            self._has_lora = True
            return
        raise ValueError(
            f"{_LORA_PLUS}: the model '{self.model.name}' has no LoRA "
            "variables (lora_kernel_a/b, lora_embeddings_a/b) among its "
            "trainable variables, so LoRA+ has nothing to scale. Enable LoRA "
            "before the optimizer is built (by compile/fit): "
            "`layer.enable_lora(rank)` on a Dense, EinsumDense, Embedding or "
            "convolution layer, or `backbone.enable_lora(rank)` on a KerasHub "
            "backbone."
        )

    def _base(self, variable):
        if not self.base_layers:
            return None
        entry = self._base_cache.get(id(variable))
        if entry is None or entry[0] is not variable:
            self._fill_base_cache()
            entry = self._base_cache.get(id(variable))
            if entry is None or entry[0] is not variable:
                return None
        return entry[1]

    def _fill_base_cache(self):
        """The innermost `base` layer's multiplier for each variable now."""
        claims = {}  # id(variable) -> [(variable, layer ids, multiplier)]
        for layer, m in self.base_layers:
            inner = frozenset(id(l) for l in _keras_compat.nested_layers(layer))
            # All its weights: KerasHub's `enable_lora` sets `trainable=False`
            # on every layer but the LoRA ones, and a frozen layer lists no
            # `trainable_variables`, even those of its trainable sublayers.
            for v in layer.weights:
                claims.setdefault(id(v), []).append((v, inner, m, layer))
        cache = {}
        for key, found in claims.items():
            # A layer nested in another claiming layer is more specific.
            innermost = [c for c in found
                         if not any(o is not c and o[1] < c[1] for o in found)]
            values = {c[2] for c in innermost}
            if len(values) > 1:
                a, b = innermost[0], next(c for c in innermost if c[2] != innermost[0][2])
                raise ValueError(
                    f"{_LORA_PLUS}: the `base` layers '{a[3].name}' and "
                    f"'{b[3].name}' both hold variable '{a[0].path}' and "
                    f"disagree on it ({a[2]} and {b[2]})."
                )
            cache[key] = (found[0][0], innermost[0][2])
        self._base_cache = cache
