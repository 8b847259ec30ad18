"""torch.compile: difflr's update traced into the step (`jit_compile=True` in
`model.compile`, or `torch.compile` around a custom step).

The numbers are checked against a plain optimizer per variable and against
difflr's eager update (itself checked against references in test_contract
and test_freeze); the graph against plain Keras's, with Dynamo's own counters:
no graph break plain Keras does not have, and no recompilation when the
multipliers change.
"""

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, backend, to_numpy
from difflr._selfcheck import (DECAY_MULTS, LR, LR_MULTS, OPTIMIZERS, SHAPES, WD,
                               gradients, variables, wd_kwargs)

pytestmark = pytest.mark.skipif(
    backend() != "torch",
    reason="torch.compile is the torch backend's; TensorFlow and JAX compile "
           "the step in test_fit and test_contract")

STEPS, CHANGE_AT = 5, 2
NEW_MULTS = [2.0, 0.5, 1.0, 0.1]  # from step CHANGE_AT on


def _dynamo():
    import torch

    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    return counters


def _graphs(counters):
    return counters["stats"]["unique_graphs"]


def _wrapped(name, vs, mults=LR_MULTS):
    return difflr.LRMultiplier(
        OPTIMIZERS[name](LR, **wd_kwargs(name, WD)),
        multipliers=[(v, m) for v, m in zip(vs, mults)],
        decay_multipliers=[(v, d) for v, d in zip(vs, DECAY_MULTS)])


def _tensors(step_grads, vs=None):
    """The gradients as tensors, cast to the dtypes of `vs` if given."""
    tensors = [keras.ops.convert_to_tensor(g) for g in step_grads]
    if vs is None:
        return tensors
    return [keras.ops.cast(g, v.dtype) for g, v in zip(tensors, vs)]


# One optimizer or two per path of `difflr._update.torch_traced` (compiling
# is slow: all of Keras's optimizers would add minutes to every CI run):
# Keras's kernels restated (SGD, Adam, AdamW with decay), the step form
# (Adamax; Nadam's global state; Adadelta, whose Keras kernel breaks the
# graph on 3.15), one call per variable (RMSprop with momentum), and the
# per-variable `update_step` with held pauses (Ftrl; Lamb).
PATHS = ["sgd_momentum_nesterov", "adam_amsgrad", "adamw", "adamax", "nadam",
         "adadelta", "rmsprop_centered_momentum", "ftrl", "lamb"]


@pytest.mark.parametrize("name", PATHS)
def test_a_compiled_step_matches_a_copy_per_variable_and_does_not_recompile(name):
    grads = gradients(STEPS, SHAPES)
    reference = _copy_per_variable(name, variables(SHAPES), grads, change=NEW_MULTS)

    counters = _dynamo()
    vs = variables(SHAPES)
    opt = _wrapped(name, vs)
    graphs = _compiled_steps(opt, vs, grads, change=NEW_MULTS)
    # The steps were compiled, through the traced update: the eager one
    # plans (`TorchUpdate.plan`) at its first fused update.
    assert graphs[0] > 0 and opt._update._plan is None, graphs
    for w, r in zip(vs, reference):
        assert_close(w, r, what=f"{name} under torch.compile: {w.path}")
    ours = dict(counters["graph_break"]), graphs
    # Plain Keras's breaks, in the same loop: its optimizer over all variables.
    counters = _dynamo()
    vs = variables(SHAPES)
    graphs = _compiled_steps(OPTIMIZERS[name](LR, **wd_kwargs(name, WD)), vs, grads)
    plain = dict(counters["graph_break"]), graphs
    _assert_no_break_plain_keras_lacks(name, ours[0], plain[0])
    # No recompilation when the multipliers change at step CHANGE_AT, nor
    # after (Keras 3.12's Adafactor compiles again at its second step, with
    # or without difflr).
    settled = ours[1][CHANGE_AT - 1:]
    assert settled == [settled[0]] * len(settled), f"graphs after each step: {ours[1]}"
    if not plain[0]:  # else the break splits each frame into graphs
        assert ours[1][-1] <= plain[1][-1], f"graphs: {ours[1]}, plain {plain[1]}"


def _copy_per_variable(name, vs, grads, change=None):
    """The reference: one plain optimizer per variable of `vs` at lr * m and
    wd * d, eager, its rate set to lr * `change[i]` at step CHANGE_AT; each
    gradient cast to its variable's dtype. Returns `vs`, trained."""
    copies = [OPTIMIZERS[name](LR * m, **wd_kwargs(name, WD * d))
              for m, d in zip(LR_MULTS, DECAY_MULTS)]
    for k, step_grads in enumerate(grads):
        for i, (copy, v, g) in enumerate(zip(copies, vs, _tensors(step_grads, vs))):
            if k == CHANGE_AT and change is not None:
                copy.learning_rate = LR * change[i]
            copy.apply([g], [v])
    return vs


def _assert_no_break_plain_keras_lacks(what, ours, plain):
    """Each break of ours has a reason plain Keras's breaks have too (where
    Keras's own kernel breaks, Dynamo counts that break once per frame
    between it and the compiled function, and difflr's hooks add frames)."""
    extra = set(ours) - set(plain)
    assert not extra, f"{what}: graph breaks plain Keras does not have: {extra}"
    if not plain:
        assert not ours


def _compiled_steps(opt, vs, grads, change=None):
    """Runs `opt.apply` compiled, changing the multipliers to `change` at
    step CHANGE_AT; returns the number of graphs compiled after each step."""
    import torch
    from torch._dynamo.utils import counters

    opt.build(vs)
    step = torch.compile(lambda g: opt.apply(g, vs))
    graphs = []
    for k, step_grads in enumerate(grads):
        if k == CHANGE_AT and change is not None:
            opt.set_multipliers([(v, m) for v, m in zip(vs, change)])
        step(_tensors(step_grads))
        graphs.append(_graphs(counters))
    return graphs


@pytest.mark.parametrize("name", ["sgd_momentum", "adamw", "nadam", "ftrl",
                                  "rmsprop_centered_momentum", "lamb"])
def test_a_pause_under_torch_compile_matches_the_eager_update(name):
    """A pause begins and ends inside compiled training: the paused variable
    stands still, and everything equals the eager update (velocities
    cleared, state held or run, as `difflr._pause` says)."""
    import torch

    grads = gradients(STEPS, SHAPES)
    paused = [0.0, 1.0, 2.5, 0.3]  # variable 0 paused at CHANGE_AT, for 2 steps

    def train(compiled):
        vs = variables(SHAPES)
        opt = _wrapped(name, vs)
        opt.build(vs)
        step = lambda g: opt.apply(g, vs)
        step = torch.compile(step) if compiled else step
        during, graphs = None, []
        for k, step_grads in enumerate(grads):
            if k == CHANGE_AT:
                opt.set_multipliers([(v, m) for v, m in zip(vs, paused)])
                during = to_numpy(vs[0]).copy()
            if k == CHANGE_AT + 2:
                np.testing.assert_array_equal(to_numpy(vs[0]), during)
                opt.set_multipliers([(v, m) for v, m in zip(vs, LR_MULTS)])
            step(_tensors(step_grads))
            graphs.append(_graphs(counters))
        return vs, graphs

    counters = _dynamo()
    compiled, graphs = train(True)
    assert graphs == [graphs[0]] * STEPS, f"graphs after each step: {graphs}"
    for w, e in zip(compiled, train(False)[0]):
        assert_close(w, e, what=f"{name} paused under torch.compile: {w.path}")


def _classifier():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh", name="body1")(inputs)
    h = keras.layers.Dense(8, activation="tanh", name="body2")(h)
    outputs = keras.layers.Dense(3, name="head")(h)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def _fit(difflr_on, jit_compile):
    """Four epochs of AdamW on a 3-group model; with difflr, gradual
    unfreezing with a two-epoch ramp changes the multipliers every batch."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    model = _classifier()
    inner = keras.optimizers.AdamW(0.01, weight_decay=0.1)
    callbacks = []
    if difflr_on:
        groups = difflr.groups(model)
        inner = difflr.LRMultiplier(inner, keep_frozen_state=True)
        callbacks = [difflr.callbacks.GradualUnfreezing(
            groups, every=1, multipliers=difflr.discriminative(groups, factor=2.0),
            ramp_epochs=2)]
    model.compile(optimizer=inner, loss="mse", jit_compile=jit_compile)
    model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
              callbacks=callbacks)
    return model


def test_jit_compiled_fit_has_no_graph_break_or_graph_plain_keras_lacks():
    counters = _dynamo()
    _fit(False, jit_compile=True)
    plain = dict(counters["graph_break"]), _graphs(counters)
    counters = _dynamo()
    compiled = _fit(True, jit_compile=True)
    ours = dict(counters["graph_break"]), _graphs(counters)
    _assert_no_break_plain_keras_lacks("fit", ours[0], plain[0])
    assert sum(ours[0].values()) <= sum(plain[0].values())
    assert ours[1] <= plain[1], f"graphs: difflr {ours[1]}, plain AdamW {plain[1]}"
    eager = _fit(True, jit_compile=False)
    for w, e in zip(compiled.weights, eager.weights):
        assert_close(w, e, what=f"compiled fit with ramped unfreezing: {w.path}")


@pytest.mark.parametrize("name", ["sgd_momentum", "adamax", "lion"])
def test_mixed_precision_variables_under_torch_compile(name):
    """A bfloat16 variable among float32 ones: the float32 ones match a plain
    optimizer per variable, as eagerly (the weight decay factors stay
    float32: rounded to bfloat16, a small decay rounds away). Compiled with
    `aot_eager`, which keeps the casts that inductor may drop. (Not Adam:
    Keras's own fused torch Adam casts the rate to the first variable's
    dtype for all of them, and difflr's restated kernel does the same.)"""
    import torch

    dtypes = ["bfloat16", "float32", "float32", "float32"]
    grads = gradients(4, SHAPES)

    def build():
        values = variables(SHAPES)
        return [keras.Variable(to_numpy(v), name=f"m{i}", dtype=dtype)
                for i, (v, dtype) in enumerate(zip(values, dtypes))]

    reference = _copy_per_variable(name, build(), grads)
    _dynamo()
    vs = build()
    opt = _wrapped(name, vs)
    opt.build(vs)
    step = torch.compile(lambda g: opt.apply(g, vs), backend="aot_eager")
    for step_grads in grads:
        step(_tensors(step_grads, vs))
    for w, r in list(zip(vs, reference))[1:]:
        assert_close(w, r, what=f"{name}, float32 beside bfloat16: {w.path}")
