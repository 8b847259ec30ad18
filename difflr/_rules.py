"""Rule maps: parsing, validation and resolution to one value per variable.

A rule map says which variables get which multiplier. Its keys may be a
variable, a layer or nested model, an exact `variable.path`, a regular
expression full-matched against `variable.path`, a layer class, or a callable
`variable -> float | None`. Every variable gets the value of the most specific
rule that covers it, in this order (most specific first):

    variable > innermost layer > outer layer/model > exact path > regex >
    layer class > callable > saved resolution > layer declaration > 1.0

Two rules of the same rank that disagree on one variable are an error, never
"first match wins". So is a rule that covers no trainable variable.
"""

import math
import numbers
import re

import keras

from difflr import _keras_compat

# Ranks, most specific first. "saved" is the per-variable table a loaded
# optimizer carries for rules that could not be saved as such (objects,
# callables); "declared" is a layer's own `kernel_lr_multiplier`.
VARIABLE, LAYER, PATH, REGEX, CLASS, CALLABLE, SAVED, DECLARED = range(8)
_RANK_NAMES = ("variable", "layer", "exact path", "regex", "layer class",
               "callable", "saved", "layer declaration")


def check_value(value, what, culprit):
    """Returns `value` as a float, or raises naming `culprit`."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()  # a 0-d NumPy array or tensor
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"The {what} for {culprit} must be a non-negative finite number; "
            f"received {value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"The {what} for {culprit} must be a non-negative finite number "
            f"(0 freezes, 1 is the base rate); received {value}."
        )
    return value


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
            value, what, self.describe()
        )

    def same_key(self, other):
        if self.kind in (VARIABLE, LAYER, CALLABLE):
            return self.key is other.key
        return type(self.key) is type(other.key) and self.key == other.key

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
    parsed = []
    for key, value in items:
        rule = Rule(key, value, what)
        if any(rule.same_key(other) for other in parsed):
            raise ValueError(f"The {what} {rule.describe()} is given twice.")
        parsed.append(rule)
    return parsed


def merge(old_rules, new_rules):
    """`old_rules` with each rule of `new_rules` replacing its namesake."""
    merged = [r for r in old_rules if not any(r.same_key(n) for n in new_rules)]
    return merged + list(new_rules)


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


def resolve(variables, rules, what, model=None, saved=None, declared_attr=None):
    """Resolves `rules` to one value per variable.

    Args:
        variables: the trainable variables, in the optimizer's order.
        rules: a list of `Rule`s.
        what: "learning-rate multiplier" or "decay multiplier", for messages.
        model: the model owning the variables, or None if unknown (only
            layer-class rules need it).
        saved: optional list of values per variable (the saved resolution).
        declared_attr: the variable attribute holding a layer declaration.

    Returns:
        A tuple `(values, sources)`: a float per variable, and for each the
        description of the rule that decided it ("default" if none did).
    """
    position = {id(v): i for i, v in enumerate(variables)}
    claims = [[] for _ in variables]

    def claim(index, candidate):
        claims[index].append(candidate)

    for rule in rules:
        matched = 0
        if rule.kind == VARIABLE:
            if id(rule.key) not in position:
                raise _no_match(rule, variables, "it is not a trainable variable "
                                "of the model: is its layer trainable=False?")
            claim(position[id(rule.key)], _Candidate(VARIABLE, rule, rule.value))
        elif rule.kind == LAYER:
            layer_ids = frozenset(id(l) for l in _keras_compat.nested_layers(rule.key))
            for v in rule.key.trainable_variables:
                if id(v) in position:
                    claim(position[id(v)], _Candidate(LAYER, rule, rule.value, layer_ids))
                    matched += 1
            if not matched:
                why = ("it has no trainable variables: is it built, and "
                       "trainable?" if not rule.key.trainable_variables else
                       "its variables are not among the model's trainable ones")
                raise _no_match(rule, variables, why)
        elif rule.kind == PATH:
            exact = [i for i, v in enumerate(variables) if v.path == rule.key]
            if len(exact) > 1:
                raise ValueError(
                    f"The {what} rule '{rule.key}' names {len(exact)} "
                    "variables with that same path (sub-models with equally "
                    "named layers). Use the layer or variable object as the key "
                    "instead, so that it is clear which one you mean."
                )
            if exact:
                claim(exact[0], _Candidate(PATH, rule, rule.value))
                matched = 1
            else:
                try:
                    pattern = re.compile(rule.key)
                except re.error as e:
                    raise ValueError(
                        f"The {what} rule '{rule.key}' is neither the path of "
                        f"a trainable variable nor a valid regular expression "
                        f"({e}). Trainable variables are, for example: "
                        f"{_sample_paths(variables)}."
                    ) from None
                for i, v in enumerate(variables):
                    if pattern.fullmatch(v.path):
                        claim(i, _Candidate(REGEX, rule, rule.value))
                        matched += 1
                if not matched:
                    raise _no_match(rule, variables, "no variable path equals it "
                                    "or full-matches it as a regular expression")
        elif rule.kind == CLASS:
            if model is None:
                raise ValueError(
                    f"The {what} {rule.describe()} needs the model's layers, "
                    "and difflr could not find the model. Build the optimizer "
                    "through `model.compile(optimizer=...)` and `model.fit`, or "
                    "call `optimizer.build(model.trainable_variables)` yourself."
                )
            for layer in _keras_compat.nested_layers(model):
                if not isinstance(layer, rule.key):
                    continue
                layer_ids = frozenset(id(l) for l in _keras_compat.nested_layers(layer))
                for v in layer.trainable_variables:
                    if id(v) in position:
                        claim(position[id(v)], _Candidate(
                            CLASS, rule, rule.value, layer_ids, rule.key))
                        matched += 1
            if not matched:
                raise _no_match(rule, variables, "the model has no trainable "
                                f"layer of class {rule.key.__name__}")
        elif rule.kind == CALLABLE:
            for i, v in enumerate(variables):
                value = rule.key(v)
                if value is not None:
                    value = check_value(value, what, f"{rule.describe()} on "
                                        f"variable '{v.path}'")
                    claim(i, _Candidate(CALLABLE, rule, value))
                    matched += 1
            if not matched:
                raise _no_match(rule, variables, "it returned None for every "
                                "variable")

    values, sources = [], []
    for i, v in enumerate(variables):
        candidates = claims[i]
        if candidates:
            top = min(c.rank for c in candidates)
            best = _most_specific([c for c in candidates if c.rank == top])
            distinct = {c.value for c in best}
            if len(distinct) > 1:
                a, b = best[0], next(c for c in best if c.value != best[0].value)
                raise ValueError(
                    f"Two {_RANK_NAMES[top]} rules disagree on variable "
                    f"'{v.path}': {a.rule.describe()} gives {a.value} and "
                    f"{b.rule.describe()} gives {b.value}. Give the variable "
                    "(or its innermost layer) a rule of its own to settle it."
                )
            values.append(best[0].value)
            sources.append(best[0].rule.describe())
        elif saved is not None and saved[i] is not None:
            values.append(saved[i])
            sources.append("saved with the model")
        elif declared_attr and getattr(v, declared_attr, None) is not None:
            values.append(getattr(v, declared_attr))
            sources.append("layer declaration")
        else:
            values.append(1.0)
            sources.append("default")
    return values, sources


def to_config(rules):
    """The rules that can be saved as such, as JSON-ready (key, value) pairs.

    Strings are saved as they are and layer classes by their registered name.
    Objects and callables are not: the optimizer saves their resolution.
    """
    saved = []
    for rule in rules:
        if rule.kind == PATH:
            saved.append([rule.key, rule.value])
        elif rule.kind == CLASS and _class_name(rule.key) is not None:
            saved.append([{"layer_class": _class_name(rule.key)}, rule.value])
    return saved


def from_config(pairs, custom_objects=None):
    rules = []
    for key, value in pairs:
        if isinstance(key, dict):
            key = _class_from_name(key["layer_class"], custom_objects)
        rules.append((key, value))
    return rules


def needs_resolution_to_save(rules):
    """Whether some rule can only be saved in resolved form."""
    return any(
        r.kind in (VARIABLE, LAYER, CALLABLE)
        or (r.kind == CLASS and _class_name(r.key) is None)
        for r in rules
    )


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
