"""Rule keys, ranking, and the errors bad rules get."""

import math

import numpy as np
import pytest
import keras

import difflr


def _model():
    """A nested functional backbone with its own paths, and a head."""
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, name="block1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(4, name="block2")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    outer_in = keras.Input((6,))
    y = keras.layers.Dense(3, name="neck")(backbone(outer_in))
    outputs = keras.layers.Dense(2, name="head")(y)
    return keras.Model(outer_in, outputs), backbone


def _resolved(rules=None, decay=None, model=None, **kwargs):
    model, backbone = model or _model()
    opt = difflr.LRMultiplier("sgd", rules, decay_multipliers=decay, **kwargs)
    model.compile(optimizer=opt, loss="mse")
    opt.build(model.trainable_variables)
    return opt, model, backbone


def _by_path(opt, model):
    return {v.path: opt.multiplier_for(v) for v in model.trainable_variables}


def test_a_nested_backbone_object_covers_all_its_variables():
    model, backbone = _model()
    opt, model, backbone = _resolved({backbone: 0.1}, model=(model, backbone))
    for v in backbone.trainable_variables:
        assert opt.multiplier_for(v) == 0.1
    head = model.get_layer("head")
    assert opt.multiplier_for(head.kernel) == 1.0


def test_the_most_specific_rule_wins():
    model, backbone = _model()
    block2 = backbone.get_layer("block2")
    head = model.get_layer("head")
    rules = [
        (backbone, 0.1),                 # outer layer
        (block2, 0.2),                   # inner layer beats outer
        (block2.bias, 0.3),              # variable beats layer
        ("head/kernel", 4.0),            # exact path
        ("head/.*", 5.0),                # regex loses to the exact path
        ("neck/.*", 6.0),                # regex
        (keras.layers.Dense, 7.0),       # class loses to the regex
        # A callable's value is what it returns; the pair's value is unused.
        (lambda v: 8.0 if "neck" in v.path else None, None),
    ]
    opt, model, backbone = _resolved(rules, model=(model, backbone))
    assert opt.multiplier_for(backbone.get_layer("block1").kernel) == 0.1
    assert opt.multiplier_for(block2.kernel) == 0.2
    assert opt.multiplier_for(block2.bias) == 0.3
    assert opt.multiplier_for(head.kernel) == 4.0
    assert opt.multiplier_for(head.bias) == 5.0
    assert opt.multiplier_for(model.get_layer("neck").kernel) == 6.0


def test_class_and_callable_rules():
    model, backbone = _model()
    opt, model, backbone = _resolved(
        [(keras.layers.BatchNormalization, 0.0),
         (lambda v: 3.0 if v.path.endswith("bias") else None, None)],
        model=(model, backbone), keep_frozen_state=True)
    bn = backbone.get_layer("bn")
    assert opt.multiplier_for(bn.gamma) == 0.0  # class beats callable
    assert opt.multiplier_for(model.get_layer("head").bias) == 3.0
    assert opt.multiplier_for(model.get_layer("head").kernel) == 1.0


def test_class_rules_prefer_the_most_derived_class():
    class MyDense(keras.layers.Dense):
        pass

    inputs = keras.Input((3,))
    mine = MyDense(2, name="mine")
    model = keras.Model(inputs, keras.layers.Dense(1)(mine(inputs)))
    opt, *_ = _resolved({keras.layers.Dense: 0.5, MyDense: 2.0}, model=(model, None))
    assert opt.multiplier_for(mine.kernel) == 2.0


def test_same_rank_rules_that_disagree_raise_naming_both():
    with pytest.raises(ValueError, match=r"disagree on variable 'block1/kernel'.*"
                       r"'block1/.\*' gives 0.1 and .*'block.\*' gives 0.2"):
        _resolved({"block1/.*": 0.1, "block.*": 0.2})


def test_a_path_regex_never_silently_misses_a_nested_backbone():
    """Its variables keep their own paths (block1/kernel, not
    backbone/block1/kernel): the rule raises instead of matching nothing."""
    with pytest.raises(ValueError, match="matches no trainable variable.*'block1/kernel'"):
        _resolved({"backbone/.*": 0.1})


def test_same_rank_rules_that_agree_are_fine():
    opt, model, _ = _resolved({".*block1.*": 0.1, ".*kernel": 0.1})
    assert opt.multiplier_for(model.trainable_variables[0]) == 0.1


@pytest.mark.parametrize("rule", ["no_such_layer/.*", "backbone/nothing"])
def test_a_rule_matching_nothing_raises_with_real_paths(rule):
    with pytest.raises(ValueError, match=r"matches no trainable variable.*block1/kernel"):
        _resolved({rule: 0.1})


def test_a_layer_outside_the_model_raises():
    stray = keras.layers.Dense(2)
    stray.build((3,))
    with pytest.raises(ValueError, match="matches no trainable variable"):
        _resolved({stray: 0.1})


def test_a_frozen_layer_rule_raises_and_says_why():
    model, backbone = _model()
    backbone.trainable = False
    with pytest.raises(ValueError, match="no trainable variables"):
        _resolved({backbone: 0.1}, model=(model, backbone))


def test_a_class_with_no_instance_raises():
    with pytest.raises(ValueError, match="no trainable layer of class Conv2D"):
        _resolved({keras.layers.Conv2D: 0.1})


def test_a_callable_returning_none_everywhere_raises():
    with pytest.raises(ValueError, match="returned None for every variable"):
        _resolved([(lambda v: None, None)])


def test_an_invalid_regex_raises():
    with pytest.raises(ValueError, match="neither the path .* nor a valid regular expression"):
        _resolved({"block1/(": 0.1})


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, -math.inf])
def test_bad_numbers_raise_at_once(value):
    model, backbone = _model()
    with pytest.raises(ValueError, match="non-negative finite number"):
        difflr.LRMultiplier("adam", {backbone: value})
    with pytest.raises(ValueError, match="non-negative finite number"):
        difflr.LRMultiplier("adam", decay_multipliers={backbone: value})


@pytest.mark.parametrize("value", ["0.1", None, True, [0.1]])
def test_non_numbers_raise_at_once(value):
    with pytest.raises(TypeError, match="must be a non-negative finite number"):
        difflr.LRMultiplier("adam", {"x": value})


def test_a_callable_returning_a_bad_value_names_the_variable():
    with pytest.raises(ValueError, match=r"on variable .*block1/kernel"):
        _resolved([(lambda v: -1.0, None)])


@pytest.mark.parametrize("key", [3, 1.5, object(), keras.optimizers.Adam])
def test_unknown_key_types_raise(key):
    with pytest.raises(TypeError, match="Accepted keys"):
        difflr.LRMultiplier("adam", [(key, 0.1)])


def test_wrong_container_and_optimizer_types_raise():
    with pytest.raises(TypeError, match="must be a dict"):
        difflr.LRMultiplier("adam", 0.1)
    with pytest.raises(TypeError, match="wraps a Keras optimizer"):
        difflr.LRMultiplier(42)
    with pytest.raises(ValueError):
        difflr.LRMultiplier("no_such_optimizer")
    with pytest.raises(ValueError, match="already an LRMultiplier"):
        difflr.LRMultiplier(difflr.LRMultiplier("adam"))
    with pytest.raises(TypeError, match="belong to the wrapped optimizer"):
        difflr.LRMultiplier("adam", clipnorm=1.0)


def test_numpy_scalars_are_accepted():
    opt, model, _ = _resolved({".*": np.float32(0.5)})
    assert opt.multiplier_for(model.trainable_variables[0]) == 0.5


def test_ambiguous_exact_paths_raise():
    """Two sub-models with equally named layers give equal variable paths."""
    def sub(name):
        i = keras.Input((3,))
        return keras.Model(i, keras.layers.Dense(2, name="dense")(i), name=name)

    a, b = sub("a"), sub("b")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Concatenate()([a(inputs), b(inputs)]))
    paths = [v.path for v in model.trainable_variables]
    assert paths.count("dense/kernel") == 2
    with pytest.raises(ValueError, match="names 2 variables"):
        _resolved({"dense/kernel": 0.1}, model=(model, None))
    opt, *_ = _resolved({a: 0.1}, model=(model, None))  # objects are exact
    assert [opt.multiplier_for(v) for v in model.trainable_variables] == [0.1, 0.1, 1.0, 1.0]


def test_decay_multipliers_resolve_like_multipliers():
    model, backbone = _model()
    opt, model, backbone = _resolved(
        decay={keras.layers.BatchNormalization: 0.0, ".*bias": 0.0},
        model=(model, backbone))
    bn = backbone.get_layer("bn")
    assert opt.decay_multiplier_for(bn.gamma) == 0.0
    assert opt.decay_multiplier_for(model.get_layer("head").bias) == 0.0
    assert opt.decay_multiplier_for(model.get_layer("head").kernel) == 1.0


def test_multiplier_for_before_build_and_for_strangers_raise():
    opt = difflr.LRMultiplier("adam")
    with pytest.raises(ValueError, match="not built yet"):
        opt.multiplier_for(keras.Variable(1.0))
    opt, model, _ = _resolved()
    with pytest.raises(ValueError, match="not one of the trainable variables"):
        opt.multiplier_for(keras.Variable(1.0))


def test_a_failed_build_leaves_the_optimizer_unbuilt():
    model, _ = _model()
    opt = difflr.LRMultiplier("adam", {"no_such/.*": 0.1})
    model.compile(optimizer=opt, loss="mse")
    with pytest.raises(ValueError, match="matches no trainable variable"):
        opt.build(model.trainable_variables)
    assert not opt.built
    opt.set_multipliers({"no_such/.*": 1.0})  # still matches nothing
    with pytest.raises(ValueError, match="matches no trainable variable"):
        opt.build(model.trainable_variables)
