"""difflr.callbacks.GradualUnfreezing: freezing by multipliers inside one fit."""

import os

import numpy as np
import pytest
import keras

import difflr
from conftest import backend, to_numpy
from difflr.callbacks import GradualUnfreezing

N = 16  # samples: two batches of 8 an epoch


def data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(N, 4)).astype("float32"),
            rng.normal(size=(N, 2)).astype("float32"))


def mlp(seed=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    g0 = keras.layers.Dense(5, activation="tanh", name="g0")
    g1 = keras.layers.Dense(4, activation="tanh", name="g1")
    head = keras.layers.Dense(2, name="head")
    model = keras.Model(inputs, head(g1(g0(inputs))))
    return model, [[g0], [g1], [head]]


class Recorder(keras.callbacks.Callback):
    """Weights and multipliers (of each group's kernel) at every epoch end."""

    def __init__(self, groups):
        super().__init__()
        self.groups, self.weights, self.multipliers = groups, [], []

    def on_epoch_end(self, epoch, logs=None):
        model = self.model  # on JAX this syncs the training state
        self.weights.append([to_numpy(v).copy() for v in model.trainable_variables])
        opt = difflr.lr_multiplier.find_lr_multiplier(model.optimizer, "test")
        self.multipliers.append([opt.multiplier_for(g[0].kernel) for g in self.groups])


def mlp_sgd_reference(params, x, y, rates, momentum=0.0, wd=0.0):
    """Keras SGD (momentum, decoupled decay) on `mlp` by hand, batches of 8
    in order. `rates[t][j]` is the learning rate of group j at step t, 0 for
    paused (no update, no decay, no velocity: it is cleared). Returns
    the parameters after every step."""
    params = [p.astype("float64") for p in params]
    velocity = [np.zeros_like(p) for p in params]
    history = []
    for t, step_rates in enumerate(rates):
        start = 8 * t % len(x)
        xb, yb = x[start:start + 8], y[start:start + 8]
        w0, b0, w1, b1, w2, b2 = params
        a0 = np.tanh(xb @ w0 + b0)
        a1 = np.tanh(a0 @ w1 + b1)
        out = a1 @ w2 + b2
        d_out = 2 * (out - yb) / out.size
        d_z1 = (d_out @ w2.T) * (1 - a1 ** 2)
        d_z0 = (d_z1 @ w1.T) * (1 - a0 ** 2)
        grads = [xb.T @ d_z0, d_z0.sum(0), a0.T @ d_z1, d_z1.sum(0),
                 a1.T @ d_out, d_out.sum(0)]
        for i, g in enumerate(grads):
            rate = step_rates[i // 2]
            if rate == 0:
                velocity[i] = np.zeros_like(velocity[i])
                continue
            params[i] = params[i] - params[i] * wd * rate
            velocity[i] = momentum * velocity[i] - rate * g
            params[i] = params[i] + velocity[i]
        history.append([p.copy() for p in params])
    return history


def assert_groups_open_at(recorder, initial, x, y, unfreeze_at):
    """Each group's variables (two per group: the mlp's g0, g1, head) keep
    their initial values before the epoch it opens at and move from then on,
    every epoch as plain SGD (rate 0.1 x 0.25, 0.5, 1; momentum 0.9, weight
    decay 0.01) with the group's rate 0 until it opens: two steps an epoch."""
    for epoch, weights in enumerate(recorder.weights):
        for i, (w, w0) in enumerate(zip(weights, initial)):
            if epoch < unfreeze_at[i // 2]:
                np.testing.assert_array_equal(w, w0, err_msg=f"epoch {epoch}, {i}")
            else:
                assert not np.array_equal(w, w0), f"epoch {epoch}, variable {i}"
    rates = [[0.1 * m if step // 2 >= u else 0.0
              for m, u in zip([0.25, 0.5, 1.0], unfreeze_at)]
             for step in range(2 * len(recorder.weights))]
    expected = mlp_sgd_reference(initial, x, y, rates, momentum=0.9, wd=0.01)[1::2]
    for epoch, (weights, reference) in enumerate(zip(recorder.weights, expected)):
        for i, (w, r) in enumerate(zip(weights, reference)):
            np.testing.assert_allclose(w, r, rtol=1e-4, atol=1e-6,
                                       err_msg=f"epoch {epoch}, variable {i}")


def test_groups_freeze_and_unfreeze_exactly_on_schedule_inside_one_fit():
    x, y = data()
    model, groups = mlp()
    initial = [to_numpy(v).copy() for v in model.trainable_variables]
    g0, g1, head = (g[0] for g in groups)
    # multipliers=None: the rates once unfrozen are the compiled ones.
    opt = difflr.LRMultiplier(
        keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.01),
        {g0: 0.25, g1: 0.5})
    model.compile(optimizer=opt, loss="mse")
    recorder = Recorder(groups)
    model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
              callbacks=[GradualUnfreezing(groups, every=1), recorder])

    unfreeze_at = [2, 1, 0]  # every=1: the head, then g1, then g0
    assert recorder.multipliers == [
        [0.0, 0.0, 1.0], [0.0, 0.5, 1.0], [0.25, 0.5, 1.0], [0.25, 0.5, 1.0]]
    assert_groups_open_at(recorder, initial, x, y, unfreeze_at)


def _resumable():
    model, groups = mlp()
    # No keep_frozen_state: the groups the callback froze have optimizer
    # state, and the loaded optimizer restores it for them.
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.Adam(0.02)),
                  loss="mse")
    return model, groups


def _callback(groups, multipliers):
    return GradualUnfreezing(groups, schedule=[1, 3], ramp_epochs=1,
                             multipliers=multipliers)


def test_resuming_after_load_model_continues_exactly(tmp_path):
    x, y = data()
    model, groups = _resumable()
    rates = difflr.discriminative(groups, factor=2.0)  # 0.25, 0.5, 1
    recorder = Recorder(groups)
    model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0,
              callbacks=[_callback(groups, rates), recorder])
    # g1 unfreezes at 1 and ramps over two epochs, g0 at 3.
    assert recorder.multipliers == [
        [0.0, 0.0, 1.0], [0.0, 0.25, 1.0], [0.0, 0.5, 1.0],
        [0.125, 0.5, 1.0], [0.25, 0.5, 1.0]]

    interrupted, interrupted_groups = _resumable()
    rates2 = difflr.discriminative(interrupted_groups, factor=2.0)
    interrupted.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                    callbacks=[_callback(interrupted_groups, rates2)])
    path = os.path.join(tmp_path, "m.keras")
    interrupted.save(path)  # g1 mid-ramp, g0 frozen at 0
    loaded = keras.models.load_model(path)
    loaded_groups = [[loaded.get_layer(name)] for name in ("g0", "g1", "head")]
    rates3 = difflr.discriminative(loaded_groups, factor=2.0)
    recorder2 = Recorder(loaded_groups)
    loaded.fit(x, y, batch_size=8, initial_epoch=2, epochs=5, shuffle=False,
               verbose=0, callbacks=[_callback(loaded_groups, rates3), recorder2])
    assert recorder2.multipliers == recorder.multipliers[2:]
    for a, b in zip(loaded.trainable_variables, model.trainable_variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=b.path)


def test_resuming_with_rates_read_from_a_loaded_optimizer(tmp_path):
    x, y = data()
    model, groups = _resumable()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[_callback(groups, None)])
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_groups = [[loaded.get_layer(name)] for name in ("g0", "g1", "head")]
    # The saved optimizer holds 0 for g0 and half of g1's rate, and the
    # rates the run recorded (test_unfreezing_progress.py: bit for bit).
    recorder = Recorder(loaded_groups)
    loaded.fit(x, y, batch_size=8, initial_epoch=2, epochs=4, verbose=0,
               callbacks=[_callback(loaded_groups, None), recorder])
    assert recorder.multipliers == [[0.0, 1.0, 1.0], [0.5, 1.0, 1.0]]
    # The same callback object across two fits keeps what it read first.
    model2, groups2 = _resumable()
    callback = _callback(groups2, None)
    recorder = Recorder(groups2)
    model2.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    model2.fit(x, y, batch_size=8, initial_epoch=2, epochs=4, verbose=0,
               callbacks=[callback, recorder])
    assert recorder.multipliers == [[0.0, 1.0, 1.0], [0.5, 1.0, 1.0]]


def test_groups_frozen_when_the_optimizer_was_built():
    x, y = data()
    model, groups = mlp()
    g0 = groups[0][0]
    model.compile(optimizer=difflr.LRMultiplier("sgd", {g0: 0.0}), loss="mse")
    # Rates read from the optimizer: g0's is 0, so it stays frozen for good
    # (and costs no optimizer memory); that is allowed.
    before = [to_numpy(v).copy() for v in g0.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=3, verbose=0,
              callbacks=[GradualUnfreezing(groups)])
    for v, v0 in zip(g0.trainable_variables, before):
        np.testing.assert_array_equal(to_numpy(v), v0)
    # Asking for a rate the optimizer cannot give fails before training.
    model, groups = mlp()
    model.compile(optimizer=difflr.LRMultiplier("sgd", {groups[0][0]: 0.0}),
                  loss="mse")
    with pytest.raises(ValueError, match=r"cannot unfreeze group 0 \(g0\).*had "
                       r"multiplier 0 when the optimizer was built.*compile "
                       r"without multiplier 0.*keep_frozen_state=True"):
        model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[
            GradualUnfreezing(groups, multipliers={groups[0][0]: 0.1})])


@pytest.mark.parametrize("train_bn", [True, False])
def test_normalization_layers_in_frozen_groups(train_bn):
    x, y = data()
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4,))
    body = keras.layers.Dense(6, name="body")
    bn = keras.layers.BatchNormalization(name="bn")
    head = keras.layers.Dense(2, name="head")
    model = keras.Model(inputs, head(bn(body(inputs))))
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.SGD(0.1),
                                                {bn: 0.5}), loss="mse")
    initial = {v.path: to_numpy(v).copy() for v in model.weights}
    # schedule=[]: the body group is never unfrozen.
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[
        GradualUnfreezing([[body, bn], [head]], schedule=[], train_bn=train_bn)])
    moved = {v.path: not np.array_equal(to_numpy(v), initial[v.path])
             for v in model.weights}
    assert not moved["body/kernel"] and not moved["body/bias"]
    assert moved["bn/gamma"] == train_bn and moved["bn/beta"] == train_bn
    # Moving statistics update in training whatever the multipliers.
    assert moved["bn/moving_mean"] and moved["bn/moving_variance"]
    assert model.optimizer.multiplier_for(bn.gamma) == (0.5 if train_bn else 0.0)


def test_default_groups_and_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    x, y = data()
    model, groups = mlp()
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.SGD(0.1)),
                  loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    recorder = Recorder(groups)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0,
              callbacks=[GradualUnfreezing(every=2), recorder])  # difflr.groups
    assert recorder.multipliers == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0],
                                    [0.0, 1.0, 1.0]]


def test_bad_arguments_raise_clear_errors():
    for make, error, match in [
        (lambda: GradualUnfreezing(every=0), ValueError, r"`every` must be an integer >= 1; received 0"),
        (lambda: GradualUnfreezing(every=1.5), TypeError, r"`every` must be an integer"),
        (lambda: GradualUnfreezing(every=2, schedule=[1]), ValueError, r"give `every` or `schedule`, not both"),
        (lambda: GradualUnfreezing(schedule=3), TypeError, r"`schedule` must be a list of epochs"),
        (lambda: GradualUnfreezing(schedule=[2, 1]), ValueError, r"must not decrease.*schedule\[1\] = 1 < schedule\[0\] = 2"),
        (lambda: GradualUnfreezing(schedule=[-1]), ValueError, r"`schedule\[0\]` must be an integer >= 0"),
        (lambda: GradualUnfreezing(ramp_epochs=-1), ValueError, r"`ramp_epochs`"),
        (lambda: GradualUnfreezing(train_bn="yes"), TypeError, r"`train_bn` must be True or False"),
        (lambda: GradualUnfreezing(multipliers={"g0/kernel": -1.0}), ValueError, r"GradualUnfreezing\(multipliers=...\): .*non-negative"),
        (lambda: GradualUnfreezing(groups="g0"), TypeError, r"GradualUnfreezing: the groups must be a list"),
    ]:
        with pytest.raises(error, match=match):
            make()

    x, y = data()
    model, groups = mlp()
    stranger = keras.layers.Dense(2, name="stranger")
    stranger.build((None, 3))

    def fit(callback, optimizer=None):
        model.compile(optimizer=optimizer or difflr.LRMultiplier("sgd"), loss="mse")
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])

    with pytest.raises(TypeError, match=r"GradualUnfreezing needs the model to be "
                       r"compiled with a difflr.LRMultiplier"):
        fit(GradualUnfreezing(groups), optimizer="adam")
    with pytest.raises(ValueError, match=r"'stranger'.*not a trainable variable of the model"):
        fit(GradualUnfreezing(groups[:2] + [[stranger]]))
    with pytest.raises(ValueError, match=r"leave out trainable variables.*'head/kernel'"):
        fit(GradualUnfreezing(groups[:2]))
    with pytest.raises(ValueError, match=r"needs at least two groups"):
        fit(GradualUnfreezing([[g[0] for g in groups]]))
    with pytest.raises(ValueError, match=r"`schedule` gives 3 epochs but there are only 2 groups"):
        fit(GradualUnfreezing(groups, schedule=[1, 2, 3]))
    with pytest.raises(ValueError, match=r"GradualUnfreezing\(multipliers=...\): .*"
                       r"rule 'nothing/.*' matches no trainable variable"):
        fit(GradualUnfreezing(groups, multipliers={"nothing/.*": 1.0}))
