"""Rule maps: parsing, validation and resolution to one value per variable.

A rule map says which variables get which multiplier: a number, or a
schedule of the step (`difflr/_scheduled.py`). Its keys may be a
variable, a layer or nested model, an exact `variable.path`, a regular
expression full-matched against `variable.path`, a layer class, or a callable
`variable -> float | None`. Every variable gets the value of the most specific
rule that covers it, in this order (most specific first):

    variable > innermost layer > outer layer/model > exact path > regex >
    layer class > callable > saved resolution > layer declaration > 1.0

Two rules of the same rank that disagree on one variable are an error, never
"first match wins". So is a rule that covers no trainable variable.

`RuleMaps` holds an optimizer's two maps (learning-rate and decay
multipliers) and resolves both into a `Resolution`. Parsing, merging and
resolving are linear in the number of rules and variables, but for regular
expressions and callables, which are tried on every variable.
"""

import collections
import math
import numbers
import re

import keras
import numpy as np

from difflr import _checks
from difflr import _declarations
from difflr import _keras_compat
from difflr import _scheduled

# What a rule map gives, as its messages name it.
LR = "learning-rate multiplier"
DECAY = "decay multiplier"

# Ranks, most specific first. "saved" is the per-variable table a loaded
# optimizer carries for rules that could not be saved as such (objects,
# callables); "declared" is a layer's own `kernel_lr_multiplier`.
VARIABLE, LAYER, PATH, REGEX, CLASS, CALLABLE, SAVED, DECLARED = range(8)
_RANK_NAMES = ("variable", "layer", "exact path", "regex", "layer class",
               "callable", "saved", "layer declaration")


def check_value(value, what, culprit, schedules=False):
    """Returns `value` as a float, or raises naming `culprit`. With
    `schedules`, a `LearningRateSchedule` is accepted too, as it is."""
    if schedules and _scheduled.is_schedule(value):
        return _scheduled.check(value, what, culprit)
    value = _checks.scalar(value)  # a 0-d NumPy array or tensor
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        accepted = ("a non-negative finite number or a "
                    "keras.optimizers.schedules.LearningRateSchedule"
                    if schedules else "a non-negative finite number")
        raise TypeError(
            f"The {what} for {culprit} must be {accepted}; "
            f"received {value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"The {what} for {culprit} must be a non-negative finite number "
            f"(0 freezes, 1 is the base rate); received {value}."
        )
    if value and not _FLOAT32_TINY <= value <= _FLOAT32_MAX:
        # The device holds multipliers in float32: beyond its range a value
        # would turn into inf (NaN weights) or 0 (a silent freeze).
        raise ValueError(
            f"The {what} for {culprit} must be 0 or within float32's range, "
            f"{_FLOAT32_TINY:.3g} to {_FLOAT32_MAX:.3g}, the precision the "
            f"multipliers have on the device; received {value}."
        )
    return value


_FLOAT32_TINY = float(np.finfo("float32").smallest_subnormal)
_FLOAT32_MAX = float(np.finfo("float32").max)


class Rule:
    """One entry of a rule map: what it matches and the value it gives."""

    def __init__(self, key, value, what):
        self.key = key
        self.what = what
        if isinstance(key, keras.Variable):
            self.kind = VARIABLE
        elif isinstance(key, keras.layers.Layer):
            self.kind = LAYER
        elif isinstance(key, type) and issubclass(key, keras.layers.Layer):
            self.kind = CLASS
        elif isinstance(key, str):
            self.kind = PATH  # may turn out to be a REGEX at resolution
        elif callable(key) and not isinstance(key, type):
            self.kind = CALLABLE
        else:
            raise TypeError(
                f"Cannot use {key!r} (type {type(key).__name__}) as a {what} "
                "rule. Accepted keys: a keras.Variable, a layer or model, a "
                "layer class, a string (an exact variable path or a regular "
                "expression over paths), or a callable variable -> float|None."
            )
        self.value = None if self.kind == CALLABLE else check_value(
            value, what, self.describe(), schedules=True
        )

    @property
    def identity(self):
        """Equal for two rules with the same key: the object itself for
        variables, layers and callables, else the key's type and value."""
        if self.kind in (VARIABLE, LAYER, CALLABLE):
            return ("object", id(self.key))
        return (type(self.key), self.key)

    def describe(self):
        if self.kind == VARIABLE:
            return f"variable '{self.key.path}'"
        if self.kind == LAYER:
            return f"layer '{self.key.name}' ({type(self.key).__name__})"
        if self.kind == CLASS:
            return f"layer class {self.key.__name__}"
        if self.kind == CALLABLE:
            return f"callable {getattr(self.key, '__name__', repr(self.key))}"
        return f"rule '{self.key}'"


def parse(rules, what):
    """A list of `Rule`s from a dict or a list of (key, value) pairs."""
    if rules is None:
        return []
    if isinstance(rules, dict):
        items = list(rules.items())
    elif isinstance(rules, (list, tuple)):
        items = []
        for item in rules:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise TypeError(
                    f"A {what} rule list must hold (key, value) pairs; "
                    f"received {item!r}."
                )
            items.append(tuple(item))
    else:
        raise TypeError(
            f"{what.capitalize()}s must be a dict (or a list of (key, value) "
            f"pairs) mapping rules to numbers; received "
            f"{type(rules).__name__}."
        )
    parsed = {}
    for key, value in items:
        rule = Rule(key, value, what)
        if rule.identity in parsed:
            raise ValueError(f"The {what} {rule.describe()} is given twice.")
        parsed[rule.identity] = rule
    return list(parsed.values())


def merge(old_rules, new_rules):
    """`old_rules` with each rule of `new_rules` replacing its namesake."""
    replaced = {rule.identity for rule in new_rules}
    return [r for r in old_rules if r.identity not in replaced] + list(new_rules)


def _sample_paths(variables, count=6):
    paths = [v.path for v in variables[:count]]
    more = f", ... ({len(variables)} in all)" if len(variables) > count else ""
    return ", ".join(repr(p) for p in paths) + more


def _no_match(rule, variables, why):
    return ValueError(
        f"The {rule.what} {rule.describe()} matches no trainable variable "
        f"({why}). Nothing would be scaled, so this is an error. Trainable "
        f"variables are, for example: {_sample_paths(variables)}."
    )


class _Candidate:
    """A rule's claim on one variable, with what ranks it within its rank."""

    __slots__ = ("rank", "rule", "value", "layer_ids", "cls")

    def __init__(self, rank, rule, value, layer_ids=None, cls=None):
        self.rank, self.rule, self.value = rank, rule, value
        self.layer_ids = layer_ids  # ids of the layer and all nested layers
        self.cls = cls


def _most_specific(candidates):
    """Among same-rank candidates, keep those no other one is nested in."""
    if candidates[0].layer_ids is None:
        return candidates
    # A layer that contains another claiming layer is less specific.
    innermost = [
        c for c in candidates
        if not any(o is not c and o.layer_ids < c.layer_ids for o in candidates)
    ]
    if innermost[0].cls is not None:
        # Class rules on the same layer: the most derived class wins.
        innermost = [
            c for c in innermost
            if not any(o is not c and o.cls is not c.cls
                       and issubclass(o.cls, c.cls) for o in innermost)
        ]
    return innermost


class _Variables:
    """The trainable variables being resolved, indexed by identity and path."""

    def __init__(self, variables, model):
        self.list = variables
        self.model = model
        self.position = {id(v): i for i, v in enumerate(variables)}
        self._by_path = None
        self.owner = Ownership(model, variables)

    def with_path(self, path):
        if self._by_path is None:
            self._by_path = {}
            for i, v in enumerate(self.list):
                self._by_path.setdefault(v.path, []).append(i)
        return self._by_path.get(path, [])

    def positions(self, layer_variables):
        return [self.position[id(v)] for v in layer_variables
                if id(v) in self.position]


# One function per kind of rule: each returns the rule's candidates as
# (position, _Candidate) pairs, or raises if the rule matches nothing.

def _variable_claims(rule, variables):
    key = rule.key
    if id(key) not in variables.position and variables.owner.foreign([key]):
        key = _stand_in(rule, variables, variable_counterparts(key, variables.model))
    if id(key) not in variables.position:
        raise _no_match(rule, variables.list, "it is not a trainable variable "
                        "of the model: is its layer trainable=False?")
    return [(variables.position[id(key)],
             _Candidate(VARIABLE, rule, rule.value))]


def _layer_claims(rule, variables):
    layer = rule.key
    if layer.weights and variables.owner.foreign(layer.weights):
        layer = _stand_in(rule, variables, layer_counterparts(layer, variables.model))
    layer_ids = frozenset(id(l) for l in _keras_compat.nested_layers(layer))
    candidate = _Candidate(LAYER, rule, rule.value, layer_ids)
    # All its weights that train: a frozen layer may hold trainable ones
    # (KerasHub's `enable_lora` freezes a block, not its LoRA layers).
    claims = [(i, candidate) for i in variables.positions(layer.weights)]
    if not claims:
        why = ("it has no trainable variables: is it built, and trainable?"
               if not any(v.trainable for v in layer.weights) else
               "its variables are not among the model's trainable ones")
        raise _no_match(rule, variables.list, why)
    return claims


# A rule keyed by a layer or variable of another model: the model before
# `keras.models.load_model` or `clone_model` (rule maps and groups made from
# it, "the same arguments" to resume with). Its counterpart in the model
# being trained stands in for it when there is exactly one: same name (names
# survive load_model and clone_model), class and variable shapes.

class Ownership:
    """Which model's layers and variables a rule may use: `model`'s own, or
    for a layer of another model its one counterpart in `model`.

    Args:
        model: the model being trained, or None if unknown.
        variables: its trainable variables being resolved.
    """

    def __init__(self, model, variables):
        self.model = model
        self.variables = {id(v) for v in variables}
        self.weights = None if model is None else {id(v) for v in model.weights}

    def foreign(self, weights):
        """Whether `weights` belong to another model: none of them is the
        model's (with the model unknown: some train, yet none is among the
        variables)."""
        if self.weights is None:
            return (any(v.trainable for v in weights)
                    and not any(id(v) in self.variables for v in weights))
        return bool(weights) and not any(id(v) in self.weights for v in weights)

    def layer(self, layer, culprit):
        """`layer`, or its one counterpart in the model; raises naming
        `culprit` if it has none or several."""
        if not self.foreign(layer.weights):
            return layer
        found = layer_counterparts(layer, self.model)
        if len(found) == 1:
            return found[0]
        raise ValueError(foreign_key_message(culprit, layer, self.model, len(found)))


def layer_counterparts(layer, model):
    """The layers of `model` that could stand for `layer`, of another model."""
    if model is None:
        return []
    shapes = _shapes(layer.weights)
    return [l for l in _keras_compat.nested_layers(model)
            if l.name == layer.name and type(l) is type(layer)
            and _shapes(l.weights) == shapes]


def variable_counterparts(variable, model):
    """The variables of `model` that could stand for `variable`, of another
    model: same name, shape and dtype, and the same path (or one path the
    end of the other: Keras drops or adds the outer scope on load)."""
    if model is None:
        return []
    alike = [v for v in model.weights
             if v.name == variable.name and tuple(v.shape) == tuple(variable.shape)
             and v.dtype == variable.dtype]
    exact = [v for v in alike if v.path == variable.path]
    if exact:
        return exact
    path = variable.path.split("/")
    return [v for v in alike if _ends_alike(v.path.split("/"), path)]


def _shapes(weights):
    return [tuple(v.shape) for v in weights]


def _ends_alike(a, b):
    n = min(len(a), len(b))
    return a[len(a) - n:] == b[len(b) - n:]


def _stand_in(rule, variables, found):
    """The one counterpart `found`, or an error naming the real cause."""
    if len(found) == 1:
        return found[0]
    raise ValueError(foreign_key_message(
        f"The {rule.what} {rule.describe()} matches no trainable variable: it",
        rule.key, variables.model, len(found)))


def foreign_key_message(culprit, key, model, count):
    """Why the layer or variable `key` of another model cannot be used on
    `model` (it has `count` possible counterparts there, 0 or several)."""
    kind = "variable" if isinstance(key, keras.Variable) else "layer"
    if kind == "layer":
        alike = (f"layer named '{key.name}' of class {type(key).__name__} "
                 "with those variable shapes")
        own_key = f"`model.get_layer('{key.name}')`"
    else:
        alike = f"variable named '{key.name}' with that shape and path"
        own_key = "`model.get_layer(...).kernel`"
    if model is None:
        found = ("difflr could not find that model to look for the "
                 f"{kind} standing for it")
    elif count == 0:
        found = f"'{model.name}' has no {alike} to stand for it"
    else:
        found = (f"'{model.name}' has {count} of them ({alike}s), so which "
                 "one it stands for is ambiguous")
    return (
        f"{culprit} is a {kind} of another model than the one being trained, "
        "such as the model before `keras.models.load_model` or "
        f"`keras.models.clone_model`, and {found}. Make the rule map (or the "
        "groups) again from the model you train: e.g. "
        "`difflr.layerwise_decay(model)`, `difflr.groups(model)`, or "
        f"{own_key} as the key."
    )


def _path_claims(rule, variables):
    """An exact path first; else the key is a regular expression."""
    exact = variables.with_path(rule.key)
    if len(exact) > 1:
        raise ValueError(
            f"The {rule.what} rule '{rule.key}' names {len(exact)} variables "
            "with that same path (sub-models with equally named layers). Use "
            "the layer or variable object as the key instead, so that it is "
            "clear which one you mean."
        )
    if exact:
        return [(exact[0], _Candidate(PATH, rule, rule.value))]
    try:
        pattern = re.compile(rule.key)
    except re.error as e:
        raise ValueError(
            f"The {rule.what} rule '{rule.key}' is neither the path of a "
            f"trainable variable nor a valid regular expression ({e}). "
            f"Trainable variables are, for example: "
            f"{_sample_paths(variables.list)}."
        ) from None
    candidate = _Candidate(REGEX, rule, rule.value)
    claims = [(i, candidate) for i, v in enumerate(variables.list)
              if pattern.fullmatch(v.path)]
    if not claims:
        return _renamed_path_claims(rule, variables)
    return claims


def _renamed_path_claims(rule, variables):
    """A path of the model before `load_model` or `clone_model`: Keras
    (3.15) drops the outer scopes of a Sequential's or a nested model's
    paths (`sequential/dense/bias` -> `dense/bias`), or adds them back. The
    one variable whose path ends as the key does (in two parts at least,
    layer and variable) stands for it, at the exact path's rank."""
    key = rule.key.split("/")
    found = [i for i, v in enumerate(variables.list)
             if _renamed(v.path.split("/"), key)]
    if len(found) == 1:
        return [(found[0], _Candidate(PATH, rule, rule.value))]
    if found:
        paths = ", ".join(repr(variables.list[i].path) for i in found[:6])
        raise ValueError(
            f"The {rule.what} rule '{rule.key}' is no path of the model being "
            "trained; it looks like the path of a model before "
            "`keras.models.load_model` or `clone_model` (Keras drops or adds "
            f"the outer scopes of paths), but {len(found)} variables end like "
            f"it ({paths}), so which one it stands for is ambiguous. Use the "
            "layer or variable object of the model you train as the key, or "
            "make the rule map again from that model."
        )
    raise _no_match(rule, variables.list, "no variable path equals it or "
                    "full-matches it as a regular expression")


def _renamed(a, b):
    return len(a) != len(b) and min(len(a), len(b)) >= 2 and _ends_alike(a, b)


def _class_claims(rule, variables):
    if variables.model is None:
        raise ValueError(
            f"The {rule.what} {rule.describe()} needs the model's layers, and "
            "difflr could not find the model. Build the optimizer through "
            "`model.compile(optimizer=...)` and `model.fit`, or call "
            "`optimizer.build(model.trainable_variables)` yourself."
        )
    claims = []
    for layer in _keras_compat.nested_layers(variables.model):
        if isinstance(layer, rule.key):
            layer_ids = frozenset(id(l) for l in _keras_compat.nested_layers(layer))
            candidate = _Candidate(CLASS, rule, rule.value, layer_ids, rule.key)
            claims += [(i, candidate)
                       for i in variables.positions(layer.weights)]
    if not claims:
        raise _no_match(rule, variables.list, "the model has no trainable "
                        f"layer of class {rule.key.__name__}")
    return claims


def _callable_claims(rule, variables):
    function = rule.key
    # A callable made from a model (`difflr.lora_plus`) may hold layers of
    # another one (before load_model or clone_model): given the model being
    # trained, it returns the callable for that model.
    for_model = getattr(function, "difflr_for_model", None)
    if for_model is not None:
        function = for_model(variables.model, variables.list)
    claims = []
    for i, v in enumerate(variables.list):
        try:
            value = function(v)
        except Exception as e:
            raise ValueError(
                f"The {rule.what} {rule.describe()} raised {type(e).__name__} "
                f"on variable '{v.path}': {e}"
            ) from e
        if value is not None:
            value = check_value(value, rule.what,
                                f"{rule.describe()} on variable '{v.path}'",
                                schedules=True)
            claims.append((i, _Candidate(CALLABLE, rule, value)))
    if not claims:
        raise _no_match(rule, variables.list, "it returned None for every variable")
    return claims


_CLAIMS = {VARIABLE: _variable_claims, LAYER: _layer_claims, PATH: _path_claims,
           CLASS: _class_claims, CALLABLE: _callable_claims}


def _decide(variable, candidates):
    """The value and source of the most specific of `candidates`."""
    top = min(c.rank for c in candidates)
    best = _most_specific([c for c in candidates if c.rank == top])
    if len({c.value for c in best}) > 1:
        a, b = best[0], next(c for c in best if c.value != best[0].value)
        raise ValueError(
            f"Two {_RANK_NAMES[top]} rules disagree on variable "
            f"'{variable.path}': {a.rule.describe()} gives {a.value} and "
            f"{b.rule.describe()} gives {b.value}. Give the variable (or its "
            "innermost layer) a rule of its own to settle it."
        )
    return best[0].value, best[0].rule.describe()


def resolve(variables, rules, model=None, saved=None, declared=None):
    """Resolves `rules` to one value per variable.

    Args:
        variables: the trainable variables, in the optimizer's order.
        rules: a list of `Rule`s.
        model: the model owning the variables, or None if unknown (only
            layer-class rules need it).
        saved: optional list of values per variable (the saved resolution).
        declared: optional function `variable -> value | None`, the layer's
            own declaration (`difflr.layers`).

    Returns:
        A tuple `(values, sources)`: a float per variable, and for each the
        description of the rule that decided it ("default" if none did).
    """
    indexed = _Variables(list(variables), model)
    claims = [[] for _ in indexed.list]
    for rule in rules:
        for position, candidate in _CLAIMS[rule.kind](rule, indexed):
            claims[position].append(candidate)
    values, sources = [], []
    for i, v in enumerate(indexed.list):
        if claims[i]:
            value, source = _decide(v, claims[i])
        elif saved is not None and saved[i] is not None:
            value, source = saved[i], "saved with the model"
        elif declared is not None and declared(v) is not None:
            value, source = declared(v), "layer declaration"
        else:
            value, source = 1.0, "default"
        values.append(value)
        sources.append(source)
    return values, sources


def to_config(rules):
    """The rules that can be saved as such, as JSON-ready (key, value) pairs.

    Strings are saved as they are and layer classes by their registered name.
    Objects and callables are not: the optimizer saves their resolution.
    """
    saved = []
    for rule in rules:
        value = value_config(rule.value)
        if rule.kind == PATH:
            saved.append([rule.key, value])
        elif rule.kind == CLASS and _class_name(rule.key) is not None:
            saved.append([{"layer_class": _class_name(rule.key)}, value])
    return saved


def from_config(pairs, custom_objects=None):
    rules = []
    for key, value in pairs:
        if isinstance(key, dict):
            key = _class_from_name(key["layer_class"], custom_objects)
        rules.append((key, _scheduled.from_config(value, custom_objects)))
    return rules


def value_config(value):
    """A rule's value, JSON-ready: a number, or a schedule's config."""
    return _scheduled.to_config(value) if _scheduled.is_schedule(value) else value


def _class_name(cls):
    if getattr(keras.layers, cls.__name__, None) is cls:
        return f"keras.layers.{cls.__name__}"
    registered = keras.saving.get_registered_name(cls)
    if keras.saving.get_registered_object(registered) is cls:
        return registered
    return None


def _class_from_name(name, custom_objects=None):
    if name.startswith("keras.layers."):
        cls = getattr(keras.layers, name[len("keras.layers."):], None)
    else:
        cls = keras.saving.get_registered_object(name, custom_objects)
    if cls is None:
        raise ValueError(
            f"The saved rule for layer class '{name}' cannot be restored: the "
            "class is not registered. Import the module that defines it "
            "(decorated with @keras.saving.register_keras_serializable) first."
        )
    return cls


Resolution = collections.namedtuple(
    "Resolution", ["multipliers", "decay_multipliers", "sources", "decay_sources"])
Resolution.__doc__ = """The rules resolved for a list of variables.

Each field holds one entry per variable, in the order given: its
learning-rate multiplier, its decay multiplier, and the description of the
rule that decided each (`"layer 'body' (Dense)"`, `"rule 'head/.*'"`,
`"saved with the model"`, `"layer declaration"`, `"default"`, ...).
"""


class RuleMaps:
    """An optimizer's two rule maps, learning-rate and decay multipliers.

    Immutable: `merged` returns new maps, so that a failed change leaves the
    old ones in force.
    """

    def __init__(self, multipliers=None, decay_multipliers=None):
        self.lr = parse(multipliers, LR)
        self.decay = parse(decay_multipliers, DECAY)

    def merged(self, multipliers=None, decay_multipliers=None):
        """These maps with the given rules replacing those with their keys."""
        return self.merged_maps(RuleMaps(multipliers, decay_multipliers))

    def merged_maps(self, other):
        """These maps with the rules of `other` (`RuleMaps`) replacing those
        with their keys."""
        new = RuleMaps()
        new.lr = merge(self.lr, other.lr)
        new.decay = merge(self.decay, other.decay)
        return new

    def resolve(self, variables, model=None, saved=None):
        """A `Resolution` of `variables` (the most specific rule wins, then
        `saved`, a `(multipliers, decay_multipliers)` table per variable,
        then the layers' declarations, then 1.0)."""
        saved_lr, saved_decay = saved if saved is not None else (None, None)
        # Read from the layers now, not from when they were built.
        declared = _declarations.Declarations(variables, model)
        lr, lr_sources = resolve(variables, self.lr, model, saved_lr,
                                 declared.lr)
        decay, decay_sources = resolve(variables, self.decay, model, saved_decay,
                                       declared.decay)
        return Resolution(lr, decay, lr_sources, decay_sources)

    def needs_resolution_to_save(self):
        """Whether some rule can only be saved in resolved form."""
        return any(
            r.kind in (VARIABLE, LAYER, CALLABLE)
            or (r.kind == CLASS and _class_name(r.key) is None)
            for r in self.lr + self.decay
        )

    def to_config(self):
        """The savable rules, as `(multipliers, decay_multipliers)` lists of
        JSON-ready pairs (`to_config` of each map)."""
        return to_config(self.lr), to_config(self.decay)
