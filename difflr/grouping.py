"""Layer groups: a model split from input to output, for per-group rates.

`groups(model)` is the splitter the recipes (`difflr.discriminative`,
`difflr.layerwise_decay`), gradual unfreezing and the inspection tools share;
`check_groups` validates a list of groups given by hand. Both keep one
invariant: every group is a list of layers that own trainable variables, and
every trainable variable of the model is in exactly one group.

The split is made over the layers with weights that train or can train:
variables created trainable, whether they train now or were frozen since
(`layer.trainable = False`, KerasHub's `backbone.enable_lora`). Variables
created non-trainable (BatchNormalization's moving statistics) do not count.
Groups whose layers train nothing now are then left out of the list, but
keep their place: each group's index in the whole split is its layer id
(`layer_ids`, as timm's), so freezing a layer before or after splitting
changes no other group's position.

How a model is split, in order of precedence:

1. A model whose direct layers are named like a known backbone family is split
   by those names (`_FAMILIES`; the family matching the most layers wins):
   KerasHub transformer blocks `transformer_layer_<i>`, keras.applications
   ResNet/DenseNet stages `conv<N>_...`, EfficientNet stages
   `block<N><letter>_...` (VGG and Xception `block<N>_...`), ConvNeXt stages
   `..._stage_<N>_...`, MobileNetV2/V3 inverted-residual blocks
   `block_<N>_...` / `expanded_conv[_<N>]_...` and MobileNet blocks
   `conv_dw_<N>` / `conv_pw_<N>`. Blocks are ordered by their number (10
   after 9); an unnumbered block (Keras's auto-naming: `transformer_block`,
   `transformer_block_1`, ...) comes before the numbered ones. A layer that
   holds blocks (KerasHub ViT's encoder) stands for them; blocks of two such
   holders are told apart by their holder, ordered as the model applies the
   holders (an encoder's block 1 and a decoder's block 1 are two groups).
   Weighted layers before the first block (and, for transformers,
   every layer named like `*embedding*`) form the first group; layers between
   blocks join the block before them; layers after the last block are split
   as in 2, a normalization layer right after the last block joining it
   (ResNetV2's `post_bn`) except in a transformer, whose final norm is the
   norm of all blocks' output and has an id of its own in timm and BEiT.
2. Any other functional or Sequential model: one group per topological depth,
   counting only layers with weights that train or can train (two parallel
   branches at the same depth share a group). A nested model is split by its
   own structure and its groups take consecutive depths. A normalization
   layer joins the group of the weighted layer before it (fastai keeps
   BatchNorm with its conv), or the first group if none comes before it. A
   shared layer stays where it is first used.
3. A subclassed model: its direct layers as a chain, in the order they were
   assigned. A model that owns variables of its own (not through a sub-layer)
   and every other layer with weights stays whole: one group.

Where the names and the structure disagree (blocks applied in another order
than their numbers, two families matching equally many layers, more blocks
named in the variable paths than groups found), `groups` warns, naming the
layers: the split is then a guess.
"""

import re
import warnings

import keras

from difflr import _keras_compat
from difflr import _rules

NORMALIZATION_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in ("BatchNormalization", "LayerNormalization",
                 "GroupNormalization", "UnitNormalization", "RMSNormalization")
    if hasattr(keras.layers, name)
)

# family -> regular expression full-matched against a layer name; its first
# non-empty group is the block number (none: an unnumbered block, first). A
# group named `next` belongs to the block after that number (ConvNeXt's
# downsampling_block_i opens stage i + 1, as in timm's group_matcher).
_FAMILIES = {
    # KerasHub: `transformer_layer_<i>` (BERT, Llama, Gemma, ...), and inside
    # an encoder layer `transformer_block_<i>` (ViT) or `layers_<i>` (DINOv2).
    # Unnumbered: Keras auto-names a custom `TransformerBlock` layer class
    # `transformer_block`, then `transformer_block_1`, ... (Keras's
    # text-classification-with-transformer example).
    "transformer": re.compile(
        r"transformer_layer(?:_(\d+))?|transformer_block(?:_(\d+))?|layers_(\d+)"),
    "resnet": re.compile(r"conv(\d+)_.*"),
    # EfficientNet (block2b_...), VGG and Xception (block2_conv1).
    "efficientnet_vgg": re.compile(r"block(\d+)[a-z]?_.*"),
    "convnext": re.compile(r".*_stage_(\d+)_.*|.*_downsampling_block_(?P<next>\d+)"),
    "mobilenet_v2_v3": re.compile(r"block_(\d+)_.*|expanded_conv_(?:(\d+)_)?.*"),
    "mobilenet": re.compile(r"conv_(?:dw|pw)_(\d+)(?:_.*)?"),
}
_EMBEDDING_NAME = re.compile(r".*embedding.*", re.IGNORECASE)
# An unnumbered block sorts before every numbered block of its holder.
_UNNUMBERED = -1


def trainable_weights(layer):
    """The variables of `layer` that train: its `trainable_variables`, but
    also those of trainable layers inside a frozen one (KerasHub's
    `enable_lora` freezes a block and leaves its LoRA layers trainable; the
    model trains their adapters, but the block lists no trainable
    variables)."""
    return [v for v in layer.weights if v.trainable]


def _structural_weights(layer):
    """The variables of `layer` that train or can train: those that train
    now, and those created trainable but frozen since (by `trainable=False`
    on their layer or a parent, or by `enable_lora` on a kernel). The
    groups' structure is made of these, so that freezing does not move it."""
    created = {id(v) for v in _keras_compat.created_trainable(layer)}
    return [v for v in layer.weights if v.trainable or id(v) in created]


def groups(model):
    """Splits a model into ordered groups of layers, from input to head.

    The groups are what the recipes give learning rates to: fastai's layer
    groups, or the layer ids of timm's layer-wise decay. Each group is a list
    of layers that own trainable variables, and every trainable variable of
    the model is in exactly one group (its variables are resolved from the
    layer objects, however deep).

    - A model named like a known backbone family is split by its blocks:
      KerasHub transformers (`token_embedding`/`position_embedding`... first,
      then `transformer_layer_0`, `transformer_layer_1`, ... in numeric
      order, then the rest), keras.applications ResNet and DenseNet (stem
      `conv1`, then stages `conv2_...` to `conv5_...`), EfficientNet (stem,
      stages `block1..._` to `block7..._`, then `top_conv`; VGG and Xception
      likewise), ConvNeXt (stem, stages), MobileNetV2/V3 (stem, one group
      per inverted-residual block, then the top convs) and MobileNet (one
      group per depthwise/pointwise pair).
      A normalization layer right after the last block joins it, except a
      transformer's final norm, which gets a group of its own (as in timm).
      An unnumbered block is the first of its family (Keras auto-names a
      custom `TransformerBlock` class `transformer_block`, then
      `transformer_block_1`, ...). Blocks inside two layers that hold them
      (an encoder and a decoder) are told apart by their holder, in the
      order the model applies the holders, even if their numbers repeat.
    - Any other functional or Sequential model: one group per topological
      depth, counting only layers with weights (parallel branches share a
      group). A normalization layer (BatchNormalization,
      LayerNormalization, GroupNormalization, RMSNormalization) joins the
      group of the weighted layer before it, as fastai keeps BatchNorm with
      its conv. A shared layer stays where it is first used.
    - A nested model (a backbone) is split by its own structure, in place: the
      head layers after it form the last group(s).
    - A subclassed model: its direct layers in the order they were assigned.

    The structure counts every layer with weights that train or can train:
    variables created trainable count even when frozen (by
    `layer.trainable = False` or KerasHub's `backbone.enable_lora`), those
    created non-trainable (BatchNormalization's moving statistics) do not.
    A group whose layers train nothing now is left out of the list but keeps
    its place in `layer_ids`: with KerasHub's `enable_lora` the frozen
    embeddings drop out, and the blocks keep the ids (and so the
    `layerwise_decay` rates) they had before it.

    Where the names and the structure disagree (blocks applied in another
    order than their numbers, two families matching equally many layers,
    more blocks named in the variable paths than groups), it warns with a
    `UserWarning` naming the layers.

    If the split does not suit you, pass your own list of groups (lists of
    layers) to the recipes instead.

    Args:
        model (keras.Model | keras.layers.Layer): A built Keras model (or
            layer) with trainable variables.

    Returns:
        list[list[keras.layers.Layer]]: The groups, bottom (input side) first,
        head last; each group a list of layers. Its `repr` shows one line per
        group. Its attribute `layer_ids` gives each group's index in the whole
        split, frozen groups included (timm's layer ids), and `num_layer_ids`
        the number of groups in the whole split; without frozen groups they are
        `0, ..., len - 1` and `len`.

    Raises:
        TypeError: if `model` is not a Keras layer or model.
        ValueError: if `model` is not built, or has no trainable variables.

    Example:

    >>> import keras, difflr
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(4, name="body")(inputs)
    >>> x = keras.layers.BatchNormalization(name="body_bn")(x)
    >>> outputs = keras.layers.Dense(1, name="head")(x)
    >>> model = keras.Model(inputs, outputs)
    >>> difflr.groups(model)
    [[body, body_bn],
     [head]]
    >>> [[layer.name for layer in group] for group in difflr.groups(model)]
    [['body', 'body_bn'], ['head']]
    >>> for name in ("body", "body_bn"):
    ...     model.get_layer(name).trainable = False
    >>> split = difflr.groups(model)  # the frozen group keeps id 0
    >>> split, split.layer_ids, split.num_layer_ids
    ([[head]], [1], 2)
    """
    check_model(model, "difflr.groups")
    structure = _split(model)
    live, layer_ids = _training_now(structure)
    # The invariant is what every recipe relies on: verify it, always.
    result = check_groups(live, "difflr.groups", model=model)
    result.layer_ids, result.num_layer_ids = layer_ids, len(structure)
    _warn_if_blocks_share_groups(model, result)
    return result


def _training_now(structure):
    """The groups of `structure` with the layers that train now, and their
    indices in it (a group that trains nothing is left out)."""
    live, layer_ids, covered = [], [], set()
    for index, group in enumerate(structure):
        kept = []
        for layer in group:
            ids = {id(v) for v in trainable_weights(layer)}
            if ids and not ids <= covered:
                kept.append(layer)
                covered |= ids
        if kept:
            live.append(kept)
            layer_ids.append(index)
    return live, layer_ids


# A transformer block in a variable path, wherever the block sits: the path
# up to it tells blocks of two holders (encoder/..., decoder/...) apart.
_BLOCK_IN_PATH = re.compile(
    # (a block's weights may also be named after it in a layer holding many:
    # `transformer_layer_3_kernel`)
    r"(?:^|/)(?:transformer_layer|transformer_block)(?:_\d+)?(?=[/_])|(?:^|/)layers_\d+(?=/)")


def _warn_if_blocks_share_groups(model, result):
    """Says so when the variable paths name more transformer blocks than
    there are groups: blocks the split could not find would share a rate."""
    blocks = set()
    for v in trainable_weights(model):
        match = _BLOCK_IN_PATH.search(v.path)
        if match:
            blocks.add(v.path[:match.end()])
    if len(blocks) > len(result):
        shown = ", ".join(repr(b) for b in sorted(blocks)[:6])
        warnings.warn(
            f"difflr.groups split the model '{model.name}' into {len(result)} "
            f"groups, but its variable paths name {len(blocks)} transformer "
            f"blocks ({shown}): some blocks share a group, so recipes give "
            "them one rate. Pass `groups=` (a list of lists of layers, one "
            "per block) to the recipe to split it yourself.",
            stacklevel=3,
        )


def check_model(model, who):
    """Raises unless `model` is a built Keras layer with trainable variables."""
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"{who} needs a Keras model (or layer); received {model!r} of type "
            f"{type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"{who}: the model '{model.name}' is not built, so it has no "
            "variables yet. Build it first: give it a `keras.Input`, call it "
            "on a batch, or call `model.build(input_shape)`."
        )
    if not trainable_weights(model):
        raise ValueError(
            f"{who}: the model '{model.name}' has no trainable variables (are "
            "all its layers `trainable=False`?). There is nothing to group."
        )


def check_groups(groups, who, model=None, complete=True):
    """Validates a list of groups and returns it as a list of lists of layers.

    A group may be given as a single layer. Every layer must own trainable
    variables and no variable may be in two groups. If `model` is given, every
    variable must be a trainable variable of `model` and, with
    `complete=True`, every trainable variable of `model` must be covered.

    Args:
        groups: A list of groups, bottom to head.
        who: The caller, named in error messages.
        model: Optional model the groups must belong to.
        complete: Whether the groups must cover all of `model`'s trainable
            variables (only checked when `model` is given).

    Returns:
        A `list` of lists of layers (printed one line per group).
    """
    if isinstance(groups, keras.layers.Layer) or not isinstance(
            groups, (list, tuple)):
        raise TypeError(
            f"{who}: the groups must be a list of groups, bottom to head, each "
            "a list of layers (or a single layer), such as "
            f"`difflr.groups(model)`; received {type(groups).__name__}."
        )
    if not groups:
        raise ValueError(f"{who}: the list of groups is empty; give at least one.")
    in_model = None if model is None else {id(v) for v in model.trainable_variables}
    ownership = None if model is None else _rules.Ownership(
        model, model.trainable_variables)
    owner = {}  # id(variable) -> (group index, layer)
    result = []
    for g, group in enumerate(groups):
        members = [group] if isinstance(group, keras.layers.Layer) else group
        if not isinstance(members, (list, tuple)) or not members or not all(
                isinstance(layer, keras.layers.Layer) for layer in members):
            raise TypeError(
                f"{who}: group {g} must be a non-empty list of Keras layers (or "
                f"a single layer); received {group!r}."
            )
        members = [_own_layer(layer, ownership, f"{who}: layer "
                              f"'{layer.name}' in group {g}") for layer in members]
        for layer in members:
            if not trainable_weights(layer):
                raise ValueError(
                    f"{who}: layer '{layer.name}' in group {g} has no "
                    "trainable variables (is it built, and trainable?). Groups "
                    "hold layers with trainable variables only."
                )
            for v in trainable_weights(layer):
                if in_model is not None and id(v) not in in_model:
                    raise ValueError(
                        f"{who}: layer '{layer.name}' in group {g} has the "
                        f"variable '{v.path}', which is not a trainable "
                        f"variable of the model '{model.name}'."
                    )
                if id(v) in owner:
                    first_g, first_layer = owner[id(v)]
                    raise ValueError(
                        f"{who}: the variable '{v.path}' is in group {first_g} "
                        f"(layer '{first_layer.name}') and again in group {g} "
                        f"(layer '{layer.name}'). Each variable must be in "
                        "exactly one group."
                    )
                owner[id(v)] = (g, layer)
        result.append(list(members))
    if model is not None and complete and len(owner) < len(in_model):
        missing = [v.path for v in model.trainable_variables if id(v) not in owner]
        shown = ", ".join(repr(p) for p in missing[:6])
        more = f", ... ({len(missing)} in all)" if len(missing) > 6 else ""
        raise ValueError(
            f"{who}: the groups leave out trainable variables of the model "
            f"'{model.name}': {shown}{more}. Put their layers in a group "
            "(`difflr.groups(model)` covers every trainable variable)."
        )
    return _Groups(result)


def _own_layer(layer, ownership, culprit):
    """`layer`, or if it is a layer of another model (the one before
    `load_model` or `clone_model`), its one counterpart in the model of
    `ownership` (a `_rules.Ownership`; None: the model is unknown)."""
    if ownership is None or not ownership.foreign(layer.weights):
        return layer
    return ownership.layer(layer, (
        f"{culprit} has the variable '{layer.weights[0].path}', which is not a "
        f"trainable variable of the model '{ownership.model.name}': the layer"))


class _Groups(list):
    """A plain list of groups that prints one line per group, with each
    group's layer id in the whole split (see `groups`)."""

    def __init__(self, groups=(), layer_ids=None, num_layer_ids=None):
        super().__init__(groups)
        self.layer_ids = (list(range(len(self))) if layer_ids is None
                          else list(layer_ids))
        self.num_layer_ids = len(self) if num_layer_ids is None else num_layer_ids

    def __repr__(self):
        if not self:
            return "[]"
        lines = []
        for g, group in enumerate(self):
            names = [layer.name for layer in group]
            more = ""
            if len(names) > 4:
                names, more = names[:2] + ["..."] + names[-1:], f" ({len(group)} layers)"
            lines.append(f"[{', '.join(names)}]{more}")
        if len(lines) == 1:
            return f"[{lines[0]}]"
        return "[" + ",\n ".join(lines) + "]"


def _has_trainable(op):
    """Whether `op` is a layer with weights that train or can train: the
    structure is made of these (see `_structural_weights`)."""
    return isinstance(op, keras.layers.Layer) and bool(_structural_weights(op))


def _covered(layer, sublayers):
    """Whether every weight of `layer` that can train belongs to `sublayers`."""
    covered = {id(v) for sub in sublayers for v in _structural_weights(sub)}
    return all(id(v) in covered for v in _structural_weights(layer))


def _splittable(layer):
    """A model whose trainable variables all belong to its direct layers."""
    return isinstance(layer, keras.Model) and _covered(layer, layer.layers)


def _graph(model):
    """The model's layers and ops in topological order: `(op, parents)`
    pairs, `parents` being indices of earlier pairs; and the holder of each
    layer that stands for a block holder (`id(layer) -> holder`)."""
    nodes = _keras_compat.functional_nodes(model)
    if nodes is None:
        # Sequential and subclassed models: a chain of their direct layers.
        nodes = [(layer, [i - 1] if i else []) for i, layer in enumerate(model.layers)]
    return _expand_block_holders(nodes)


def _expand_block_holders(entries):
    """A layer (not a model) that holds a backbone's blocks as its direct
    sublayers (KerasHub ViT's and DINOv2's encoders) stands for those
    sublayers, as a chain in the order they were assigned. Returns the
    entries and `{id(sublayer): holder}`: blocks are told apart by holder."""
    result, moved, holders = [], {}, {}
    for i, (op, parents) in enumerate(entries):
        parents = [moved[p] for p in parents]
        sublayers = _held_blocks(op)
        for k, sub in enumerate(sublayers or [op]):
            result.append((sub, parents if k == 0 else [len(result) - 1]))
            if sublayers:
                holders.setdefault(id(sub), op)
        moved[i] = len(result) - 1
    return result, holders


def _held_blocks(op):
    """`op`'s direct sublayers if two or more are named as a family's blocks
    and they hold all of `op`'s trainable variables, else None."""
    if not isinstance(op, keras.layers.Layer) or isinstance(op, keras.Model):
        return None
    sublayers = _keras_compat.direct_layers(op)
    for pattern in _FAMILIES.values():
        blocks = sum(1 for sub in sublayers if pattern.fullmatch(sub.name))
        if blocks >= 2 and _covered(op, sublayers):
            return sublayers
    return None


def _split(layer):
    """The whole structure of `layer`: groups of layers with weights that
    train or can train, bottom first."""
    if not _has_trainable(layer):
        return []
    if not _splittable(layer):
        return [[layer]]
    entries, holders = _graph(layer)
    placement = _by_depth(entries)
    family = _family(entries, layer)
    if family is None:
        return _assemble(placement.values())
    return _by_family(entries, placement, family, holders, layer)


def _by_depth(entries):
    """Where each weighted layer goes by topological depth.

    Returns a dict, in topological order, from `id(layer)` to a list of
    `(depth, layers)` (several for a nested model, one per group of its own).
    A shared layer stays where it is first used.
    """
    depth = [0] * len(entries)
    placement = {}
    for i, (op, parents) in enumerate(entries):
        base = max((depth[p] for p in parents), default=0)
        span = 0
        if _has_trainable(op):
            if _splittable(op):
                if id(op) not in placement:
                    placement[id(op)] = [
                        (base + 1 + j, g) for j, g in enumerate(_split(op))]
                span = len(placement[id(op)])
            elif isinstance(op, NORMALIZATION_LAYERS):
                placement.setdefault(id(op), [(max(base, 1), [op])])
            else:
                placement.setdefault(id(op), [(base + 1, [op])])
                span = 1
        depth[i] = base + span
    return placement


def _assemble(placements):
    """Groups in key order; a layer whose variables an earlier group already
    holds is left out (a nested backbone's embedding reused by the task
    model, as tied LM heads do, stays with the embeddings)."""
    slots = {}
    for placement in placements:
        for key, layers in placement:
            slots.setdefault(key, []).extend(layers)
    result, covered = [], set()
    for key in sorted(slots):
        group = []
        for layer in slots[key]:
            ids = {id(v) for v in _structural_weights(layer)}
            if not ids <= covered:
                group.append(layer)
                covered |= ids
        if group:
            result.append(group)
    return result


def _block_number(pattern, name):
    match = pattern.fullmatch(name)
    if match is None:
        return None
    if match.groupdict().get("next"):
        return int(match.group("next")) + 1
    number = next((g for g in match.groups() if g), None)
    return int(number) if number is not None else _UNNUMBERED


def _weighted_layers(entries):
    """Each weighted layer once, in topological order of its first use."""
    first = {}
    for op, _ in entries:
        if _has_trainable(op):
            first.setdefault(id(op), op)
    return list(first.values())


def _family(entries, model):
    """The backbone family whose block names most weighted layers match.

    Two families matching equally many layers is a guess: it warns."""
    names = [layer.name for layer in _weighted_layers(entries)]
    counts = {family: sum(1 for n in names if pattern.fullmatch(n))
              for family, pattern in _FAMILIES.items()}
    best = max(counts.values())
    if best == 0:
        return None
    tied = [family for family, count in counts.items() if count == best]
    if len(tied) > 1:
        matches = {family: [n for n in names if _FAMILIES[family].fullmatch(n)][:4]
                   for family in tied}
        warnings.warn(
            f"difflr.groups: in '{model.name}', {len(tied)} block-naming "
            f"families match {best} layers each ({matches}); the model is "
            f"split by the first, '{tied[0]}'. Pass `groups=` to the recipe "
            "to split it yourself.",
            stacklevel=4,
        )
    return tied[0]


def _block_keys(layers, numbers, holders, model):
    """Each block's sort key: (holder's rank, number). Holders rank in the
    order the model applies their first block; within one holder, blocks go
    by number, and it warns if the model applies them in another order."""
    rank, last_seen = {}, {}
    keys = [None] * len(layers)
    for i, number in enumerate(numbers):
        if number is None:
            continue
        holder = holders.get(id(layers[i]))
        r = rank.setdefault(id(holder), len(rank))
        keys[i] = (r, number)
        before = last_seen.get(r)
        if before is not None and numbers[before] > number:
            _warn_out_of_order(model, holder, layers[before], layers[i])
        last_seen[r] = i
    return keys


def _warn_out_of_order(model, holder, earlier, later):
    where = f"'{model.name}'" + ("" if holder is None else f" (in '{holder.name}')")
    warnings.warn(
        f"difflr.groups: in {where}, block '{later.name}' is applied after "
        f"block '{earlier.name}', though its number is lower: the blocks are "
        "grouped in the order of their numbers, not the order the model "
        "applies them. If that is wrong, pass `groups=` to the recipe to "
        "split the model yourself.",
        stacklevel=5,
    )


def _by_family(entries, placement, family, holders, model):
    pattern = _FAMILIES[family]
    layers = _weighted_layers(entries)
    numbers = [_block_number(pattern, layer.name) for layer in layers]
    keys = _block_keys(layers, numbers, holders, model)
    matched = [i for i, n in enumerate(numbers) if n is not None]
    first, last = matched[0], matched[-1]
    # Depth of the last block, to tell a norm right after it (ResNetV2's
    # post_bn) from the tail's own layers. A transformer's final norm is not
    # part of its last block: it gets an id of its own after the blocks in
    # timm and BEiT, so it stays in the tail.
    block_depth = max(d for i in matched for d, _ in placement[id(layers[i])])
    keyed = []  # (sort key, layers)
    current = None
    for i, layer in enumerate(layers):
        embedding = family == "transformer" and _EMBEDDING_NAME.fullmatch(layer.name)
        if keys[i] is not None:
            current = (1,) + keys[i]
            keyed.append((current, [layer]))
        elif i < first or embedding:
            keyed.append(((0, 0), [layer]))
        elif i < last:
            keyed.append((current, [layer]))
        elif family != "transformer" and isinstance(
                layer, NORMALIZATION_LAYERS) and (
                placement[id(layer)][0][0] <= block_depth):
            keyed.append((current, [layer]))
        else:
            keyed.extend(((2, d), g) for d, g in placement[id(layer)])
    return _assemble([keyed])
