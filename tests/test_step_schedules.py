"""Multipliers that follow the step (issue 26): a rule's value may be a
`keras.optimizers.schedules.LearningRateSchedule`.

The references are PyTorch's param groups with a `LambdaLR` per group (SGD,
Adam, AdamW), a plain Keras optimizer per variable whose learning rate is
`base * schedule`, and the uninterrupted run for a `.keras` round trip. On
every backend, applied eagerly and in a compiled `fit`.
"""

import contextlib
import os

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, backend, counting_updates, to_numpy

BASE = 0.05
STEPS = 8
# Keras adds epsilon to sqrt(v), torch to sqrt(v / (1 - beta_2^t)): negligible
# alike.
EPS = 1e-10
schedules = keras.optimizers.schedules


def _warmup():
    """0 at step 0, the full rate from step 4 on: a head warm-up."""
    return schedules.PolynomialDecay(0.0, 4, end_learning_rate=1.0)


def _cosine():
    return schedules.CosineDecay(1.5, STEPS, alpha=0.1)


@keras.saving.register_keras_serializable(package="difflr_tests")
class Times(schedules.LearningRateSchedule):
    """`factor * schedule(t)`, or a constant `factor` before `start`: the
    plain optimizer's rate in the references (`base x multiplier(t)`)."""

    def __init__(self, factor, schedule=None, start=0, before=None):
        self.factor, self.schedule = factor, schedule
        self.start, self.before = start, before

    def __call__(self, step):
        value = (keras.ops.ones(()) if self.schedule is None
                 else keras.ops.cast(self.schedule(step), "float32"))
        value = self.factor * value
        if self.before is None:
            return value
        return keras.ops.where(keras.ops.cast(step, "int32") < self.start,
                               self.factor * self.before, value)

    def get_config(self):
        return {"factor": self.factor,
                "schedule": None if self.schedule is None
                else schedules.serialize(self.schedule),
                "start": self.start, "before": self.before}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config["schedule"] is not None:
            config["schedule"] = schedules.deserialize(config["schedule"])
        return cls(**config)


def _value(schedule, step):
    return float(to_numpy(keras.ops.cast(schedule(step), "float32")))


# A two-layer model and its data; in `fit`, PyTorch computes the same loss.

D, H, O, N, B = 4, 3, 2, 32, 4


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(N, D)).astype("float32"),
            rng.normal(size=(N, O)).astype("float32"))


def _model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(H, activation="tanh", name="body")(inputs)
    return keras.Model(inputs, keras.layers.Dense(O, name="head")(h))


# The groups: the body warms up, the head follows a cosine, the body's bias
# is a constant (so a constant and schedules share one step).
def _rules(model):
    body, head = model.get_layer("body"), model.get_layer("head")
    return [(body, _warmup()), (head, _cosine()), (body.bias, 2.0)]


def _group_of(path):
    return {"body/kernel": 0, "head/kernel": 1, "head/bias": 1, "body/bias": 2}[path]


GROUP_SCHEDULES = [_warmup, _cosine, None]
GROUP_FACTORS = [1.0, 1.0, 2.0]


# PyTorch: param groups with a LambdaLR each.

def _torch_optimizer(name, params_by_group, weight_decay):
    import torch

    groups = [{"params": params} for params in params_by_group]
    if name == "SGD":
        return torch.optim.SGD(groups, lr=BASE)
    if name == "Adam":
        return torch.optim.Adam(groups, lr=BASE, eps=EPS)
    return torch.optim.AdamW(groups, lr=BASE, eps=EPS, weight_decay=weight_decay)


def _lambdas():
    made = [s() if s else None for s in GROUP_SCHEDULES]
    return [(lambda t, s=s, f=f: f * (_value(s, t) if s else 1.0))
            for s, f in zip(made, GROUP_FACTORS)]


def _keras_optimizer(name, weight_decay):
    if name == "SGD":
        return keras.optimizers.SGD(BASE)
    if name == "Adam":
        return keras.optimizers.Adam(BASE, epsilon=EPS)
    return keras.optimizers.AdamW(BASE, epsilon=EPS, weight_decay=weight_decay)


def _torch_run(name, initial, paths, step_grads=None, data=None, decay=None):
    """Trains torch tensors from `initial` (arrays by path) for STEPS steps,
    with the gradients given, or those of the model's MSE on `data` (batches
    in order). `decay(t)` is the head's weight-decay factor at step t."""
    import torch

    params = {p: torch.nn.Parameter(torch.tensor(initial[p])) for p in paths}
    by_group = [[params[p] for p in paths if _group_of(p) == g] for g in range(3)]
    weight_decay = 0.1 if name == "AdamW" else 0.0
    opt = _torch_optimizer(name, by_group, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lambdas())
    for t in range(STEPS):
        if decay is not None:
            opt.param_groups[1]["weight_decay"] = weight_decay * decay(t)
        opt.zero_grad()
        if step_grads is not None:
            for p, g in zip(paths, step_grads[t]):
                params[p].grad = torch.tensor(g)
        else:
            x, y = (torch.tensor(a[t * B:(t + 1) * B]) for a in data)
            h = torch.tanh(x @ params["body/kernel"] + params["body/bias"])
            out = h @ params["head/kernel"] + params["head/bias"]
            torch.nn.functional.mse_loss(out, y).backward()
        opt.step()
        sched.step()
    return {p: params[p].detach().numpy() for p in paths}


def _decay_rules(model, name):
    """AdamW: the head's weight decay follows a schedule of its own."""
    if name != "AdamW":
        return None, None
    decay = schedules.ExponentialDecay(1.0, 2, 0.5)
    return [(model.get_layer("head"), decay)], (lambda t: _value(decay, t))


@pytest.mark.parametrize("how", ["eager", "fit"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_groups_with_their_own_schedules_land_where_torch_lambda_lr_lands(name, how):
    model = _model()
    decay_rules, decay = _decay_rules(model, name)
    opt = difflr.LRMultiplier(_keras_optimizer(name, 0.1), _rules(model),
                              decay_multipliers=decay_rules)
    variables = model.trainable_variables
    paths = [v.path for v in variables]
    initial = {v.path: to_numpy(v).copy() for v in variables}
    x, y = _data()
    if how == "eager":
        rng = np.random.default_rng(1)
        grads = [[rng.normal(size=v.shape).astype("float32") for v in variables]
                 for _ in range(STEPS)]
        for step_grads in grads:
            opt.apply([keras.ops.convert_to_tensor(g) for g in step_grads], variables)
        expected = _torch_run(name, initial, paths, step_grads=grads, decay=decay)
    else:
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
        expected = _torch_run(name, initial, paths, data=(x, y), decay=decay)
    assert int(to_numpy(opt.iterations)) == STEPS
    # Keras computes Adam's bias corrections in float32, torch in float64:
    # a few 1e-6 apart after steps of about 0.1 (a step at a wrong rate is
    # about 1e-2 off).
    for v in variables:
        assert_close(v, expected[v.path], rtol=1e-5, atol=1e-5,
                     what=f"{name} {how}: {v.path}")


@pytest.mark.parametrize("how", ["eager", "fit"])
def test_sgd_with_momentum_follows_keras_semantics(how):
    """Keras's momentum accumulates `rate * gradient`, torch's the gradient
    (the rate applies to the buffer), so a rate that changes with the step
    moves them apart: the reference is Keras's own SGD per group, whose rate
    is `base * schedule`."""
    model, reference = _model(), _model()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(BASE, momentum=0.9), _rules(model))
    # A copy per variable, at its group's rate.
    copies = {}
    for v in model.trainable_variables:
        g = _group_of(v.path)
        schedule = GROUP_SCHEDULES[g]() if GROUP_SCHEDULES[g] else None
        copies[v.path] = keras.optimizers.SGD(
            Times(BASE * GROUP_FACTORS[g], schedule), momentum=0.9)
    by_path = {v.path: v for v in reference.trainable_variables}
    x, y = _data()
    if how == "eager":
        rng = np.random.default_rng(1)
        for _ in range(STEPS):
            grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32"))
                     for v in model.trainable_variables]
            opt.apply(grads, model.trainable_variables)
            for v, g in zip(model.trainable_variables, grads):
                copies[v.path].apply([g], [by_path[v.path]])
    else:
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
        _fit_per_group(reference, copies, x, y)
    for v in model.trainable_variables:
        assert_close(v, by_path[v.path], what=v.path)


def _fit_per_group(model, copies, x, y):
    """The reference of a `fit`: each variable's own plain optimizer,
    applied to the gradients of the same batches (a custom loop, eager)."""
    for t in range(STEPS):
        grads = _gradients(model, x[t * B:(t + 1) * B], y[t * B:(t + 1) * B])
        for v, g in zip(model.trainable_variables, grads):
            copies[v.path].apply([g], [v])


def _gradients(model, x, y):
    loss_fn = keras.losses.MeanSquaredError()
    variables = model.trainable_variables
    if backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        return tape.gradient(loss, variables)
    if backend() == "jax":
        import jax

        def loss(values):
            out, _ = model.stateless_call(values, [v.value for v in model.non_trainable_variables], x)
            return loss_fn(y, out)

        return jax.grad(loss)([v.value for v in variables])
    model.zero_grad()
    loss = loss_fn(y, model(x))
    loss.backward()
    return [v.value.grad for v in variables]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_one_schedule_everywhere_is_the_plain_optimizer_at_base_times_schedule(jit_compile):
    """In a compiled `fit` (and under XLA / torch.compile): every variable
    on one schedule trains as the plain optimizer whose rate is the product;
    a `.keras` round trip in the middle continues exactly."""
    x, y = _data()
    ours, plain = _model(), _model()
    ours.compile(difflr.LRMultiplier(keras.optimizers.Adam(BASE), {".*": _cosine()}),
                 "mse", jit_compile=jit_compile)
    plain.compile(keras.optimizers.Adam(Times(BASE, _cosine())), "mse",
                  jit_compile=jit_compile)
    for model in (ours, plain):
        model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(ours.weights, plain.weights):
        assert_close(a, b, what=a.path)

    path = os.path.join(_tmp(), "mid.keras")
    ours.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer.schedule_for(loaded.trainable_variables[0]),
                      schedules.CosineDecay)
    for model in (ours, loaded):
        model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(ours.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)


def _tmp():
    import tempfile

    return tempfile.mkdtemp()


class _Switch(keras.callbacks.Callback):
    """Moves every variable to the rule given at the batches given."""

    def __init__(self, changes, traces):
        super().__init__()
        self.changes, self.traces = changes, traces
        self.traced = None  # the traces before the first change

    def on_train_batch_begin(self, batch, logs=None):
        if batch in self.changes:
            if self.traced is None:
                self.traced = _count(self.traces)
            self.model.optimizer.set_multipliers({".*": self.changes[batch]})


def _count(traces):
    if backend() != "torch":
        return len(traces)
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@contextlib.contextmanager
def _counting_traces(traces):
    """TensorFlow and JAX: counts the traces of the per-variable update in
    `traces`; torch: Dynamo counts its graphs (`_count`)."""
    if backend() == "torch":
        import torch

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        yield
        return
    with counting_updates(traces):
        yield


def test_set_multipliers_moves_between_a_constant_and_a_schedule_without_retracing():
    """Built on the warm-up (so the step runs it), moved to 0.5 at step 2,
    back to a warm-up made anew at step 4, to 0.3 at step 6. (From step 2:
    Keras's torch `train_step` compiles again at step 1, with or without
    difflr.)"""
    x, y = _data()
    ours, plain = _model(), _model()
    # (torch: compiled by torch.compile, which must not compile again.)
    jit_compile = True if backend() == "torch" else "auto"
    ours.compile(difflr.LRMultiplier(keras.optimizers.Adam(BASE), {".*": _warmup()}),
                 "mse", jit_compile=jit_compile)
    traces = []
    switch = _Switch({2: 0.5, 4: _warmup(), 6: 0.3}, traces)
    with _counting_traces(traces):
        ours.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0,
                 callbacks=[switch])
    # Traced before the first change (TensorFlow traces twice when the first
    # trace builds the optimizer), never after.
    assert switch.traced > 0 and _count(traces) == switch.traced, "retraced"
    plain.compile(keras.optimizers.Adam(_Piecewise()), "mse")
    plain.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(ours.trainable_variables, plain.trainable_variables):
        assert_close(a, b, what=a.path)


class _Piecewise(schedules.LearningRateSchedule):
    """BASE x the warm-up at steps 0 and 1, x 0.5 at 2 and 3, x the warm-up
    at 4 and 5, x 0.3 from 6 on."""

    def __call__(self, step):
        t = keras.ops.cast(step, "int32")
        warm = keras.ops.cast(_warmup()(step), "float32")
        value = keras.ops.where(t < 2, warm, keras.ops.where(
            t < 4, 0.5, keras.ops.where(t < 6, warm, 0.3)))
        return BASE * value


def test_a_schedule_the_optimizer_was_not_built_with_is_refused():
    model = _model()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(BASE),
                              {"body/.*": 1.0, "head/.*": _cosine()})
    opt.build(model.trainable_variables)
    kernel = model.get_layer("body").kernel
    # One with the same config is the same schedule, wherever it was made.
    opt.set_multipliers({"body/.*": _cosine()})
    assert opt.multiplier_for(kernel) == pytest.approx(1.5)
    assert opt.multiplier_for(kernel, step=STEPS) == pytest.approx(0.15)
    with pytest.raises(ValueError, match=r"ExponentialDecay\(initial_learning_rate=1.0, .*\) was not among"):
        opt.set_multipliers({"body/.*": schedules.ExponentialDecay(1.0, 2, 0.5)})
    # Refused as a whole: the values in force did not change.
    assert isinstance(opt.schedule_for(kernel), schedules.CosineDecay)
    opt.set_multipliers({"body/.*": 0.25})
    assert opt.schedule_for(kernel) is None and opt.multiplier_for(kernel) == 0.25


def test_a_scheduled_variable_at_zero_is_not_frozen_at_build():
    """difflr cannot know that a schedule stays at 0, so a variable whose
    schedule starts at 0 gets optimizer state (Adam's two moments)."""
    model = _model()
    opt = difflr.LRMultiplier(keras.optimizers.Adam(BASE), {"body/.*": _warmup()})
    opt.build(model.trainable_variables)
    kernel = model.get_layer("body").kernel
    assert opt.multiplier_for(kernel) == 0.0
    assert opt.multiplier_for(kernel, step=4) == 1.0
    momentums = [v for v in opt.inner_optimizer.variables
                 if v.name.startswith("body_kernel")]
    assert len(momentums) == 2


class _NoConfig(schedules.LearningRateSchedule):
    def __call__(self, step):
        return keras.ops.ones(())


def test_bad_schedules_are_refused_naming_the_rule():
    with pytest.raises(TypeError, match=r"rule 'head/\.\*'.*_NoConfig.*get_config"):
        difflr.LRMultiplier("sgd", {"head/.*": _NoConfig()})
    with pytest.raises(ValueError, match=r"rule 'head/\.\*'.*step 0 is -1"):
        difflr.LRMultiplier("sgd", {"head/.*": schedules.PolynomialDecay(-1.0, 4)})
    with pytest.raises(TypeError, match="number or a keras.optimizers.schedules"):
        difflr.LRMultiplier("sgd", {"head/.*": "fast"})


def test_with_gradient_accumulation_the_multiplier_follows_the_base_rates_step():
    """Keras calls the base rate's schedule with the count of `apply`
    calls, not `iterations` (which it divides by the accumulation steps):
    a scheduled multiplier follows the same step."""
    rng = np.random.default_rng(4)
    shapes = [(3, 2), (2,)]
    initial = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(6)]
    ours = [keras.Variable(a) for a in initial]
    opt = difflr.LRMultiplier(
        keras.optimizers.Adam(BASE, gradient_accumulation_steps=2),
        [(ours[0], _cosine())])
    copies = [keras.optimizers.Adam(Times(BASE, _cosine()), gradient_accumulation_steps=2),
              keras.optimizers.Adam(BASE, gradient_accumulation_steps=2)]
    plain = [keras.Variable(a) for a in initial]
    for step_grads in grads:
        tensors = [keras.ops.convert_to_tensor(g) for g in step_grads]
        opt.apply(tensors, ours)
        for copy, v, g in zip(copies, plain, tensors):
            copy.apply([g], [v])
    for a, b in zip(ours, plain):
        assert_close(a, b, what=a.path)
    assert opt.multiplier_for(ours[0]) == pytest.approx(_value(_cosine(), 6))


def test_gradual_unfreezing_refuses_a_scheduled_group_naming_it():
    model = _model()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(BASE), {"head/.*": _cosine()},
                              keep_frozen_state=True)
    model.compile(opt, "mse")
    x, y = _data()
    unfreeze = difflr.callbacks.GradualUnfreezing(every=1)
    with pytest.raises(ValueError, match=r"'head/kernel' follows a schedule "
                                         r"\(CosineDecay\(initial_learning_rate=1.5"):
        model.fit(x, y, batch_size=B, epochs=2, verbose=0, callbacks=[unfreeze])


def test_a_saved_table_keeps_its_order_and_the_schedules_no_rule_gives_now():
    """Built with two schedules, the first moved back to a constant before
    saving: the file's schedule indices point into the saved table, which
    loads whole and in order (training goes on exactly, and the schedule
    can be set again)."""
    x, y = _data()
    model = _model()
    model.compile(difflr.LRMultiplier(keras.optimizers.Adam(BASE),
                                      {"body/.*": _warmup(), "head/.*": _cosine()}),
                  "mse")
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    model.optimizer.set_multipliers({"body/.*": 0.5})
    path = os.path.join(_tmp(), "table.keras")
    model.save(path)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(path)
    skipped = [str(w.message) for w in caught if "Skipping variable" in str(w.message)]
    assert not skipped, skipped  # Keras skips variables whose count differs
    for m in (model, loaded):
        m.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    kernel = loaded.get_layer("body").kernel
    loaded.optimizer.set_multipliers({"body/.*": _warmup()})
    assert isinstance(loaded.optimizer.schedule_for(kernel), schedules.PolynomialDecay)


def test_weights_without_schedule_indices_load_as_constants():
    """A file of an optimizer that ran no schedule (or of difflr before
    schedules) has no schedule indices: loaded into one built with
    schedules, the constants it holds are in force, for the step and the
    readers alike."""
    x, y = _data()
    path = os.path.join(_tmp(), "constants.weights.h5")
    source = _model()
    source.compile(difflr.LRMultiplier(keras.optimizers.SGD(BASE), {"head/.*": 0.3}),
                   "mse")
    source.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    source.save_weights(path)
    target = _model()
    target.compile(difflr.LRMultiplier(keras.optimizers.SGD(BASE), {"head/.*": _cosine()}),
                   "mse")
    target.optimizer.build(target.trainable_variables)
    target.load_weights(path)
    kernel = target.get_layer("head").kernel
    assert target.optimizer.schedule_for(kernel) is None
    assert target.optimizer.multiplier_for(kernel) == pytest.approx(0.3)
    for m in (source, target):
        m.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(source.weights, target.weights):
        assert_close(a, b, what=a.path)
