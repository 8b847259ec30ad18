"""LearningRateLogger: each group's effective rate in History, epoch by epoch."""

import numpy as np
import pytest
import keras

import difflr

F32 = lambda x: float(np.float32(x))  # the base rate lives in a float32 variable


def _model():
    inputs = keras.Input((3,))
    body = keras.layers.Dense(4, name="body")
    mid = keras.layers.Dense(4, name="mid")
    head = keras.layers.Dense(1, name="head")
    return keras.Model(inputs, head(mid(body(inputs)))), body, mid, head


def _data(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)).astype("float32"),
            rng.normal(size=(n, 1)).astype("float32"))


class _SetAtEpochBegin(keras.callbacks.Callback):
    """Calls set_multipliers at the start of given epochs."""

    def __init__(self, layer_name, values):
        super().__init__()
        self.layer_name, self.values = layer_name, values

    def on_epoch_begin(self, epoch, logs=None):
        if epoch in self.values:
            model = self.model  # on JAX this syncs the training state
            model.optimizer.set_multipliers(
                {model.get_layer(self.layer_name): self.values[epoch]})


def test_history_holds_each_group_rate_per_epoch():
    model, body, mid, head = _model()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1),
                              {body: 0.1, "head/bias": 2.0})
    model.compile(optimizer=opt, loss="mse")
    schedule = lambda epoch: 0.1 * 0.5 ** epoch
    groups = [[body], [mid], [head]]
    x, y = _data()
    with pytest.warns(UserWarning, match=r"several multipliers, and each logs "
                      r"its largest: 'learning_rate/(group_2|head)' \(1, 2\)\.") as w:
        history = model.fit(
            x, y, batch_size=2, epochs=3, verbose=0,
            callbacks=[
                keras.callbacks.LearningRateScheduler(schedule),
                _SetAtEpochBegin("mid", {1: 0.0, 2: 0.3}),  # pause, resume
                difflr.callbacks.LearningRateLogger(groups),
                difflr.callbacks.LearningRateLogger(
                    groups, names=["body", "mid", "head"]),
            ])
    assert sum("several multipliers" in str(x.message) for x in w) == 2
    base = [F32(schedule(e)) for e in range(3)]
    assert history.history["learning_rate"] == base  # Keras's own key
    expected = {
        "body": [b * 0.1 for b in base],
        "mid": [base[0] * 1.0, base[1] * 0.0, base[2] * 0.3],
        # The head's kernel trains at 1, its bias at 2: the group logs 2.
        "head": [b * 2.0 for b in base],
    }
    for g, name in enumerate(["body", "mid", "head"]):
        assert history.history[f"learning_rate/group_{g}"] == expected[name]
        assert history.history[f"learning_rate/{name}"] == expected[name]


def test_a_schedule_is_logged_at_the_current_step():
    model, body, mid, head = _model()
    # 0.1 * 0.5 ** step: exact in float32 up to the rounding of 0.1.
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(schedule), {body: 0.25})
    model.compile(optimizer=opt, loss="mse")
    x, y = _data()
    history = model.fit(
        x, y, batch_size=2, epochs=2, verbose=0,  # 2 steps an epoch
        callbacks=[difflr.callbacks.LearningRateLogger([body, [mid, head]])])
    at_end = [F32(0.1) * 0.5 ** (2 * (e + 1)) for e in range(2)]
    assert history.history["learning_rate/group_0"] == pytest.approx(
        [r * 0.25 for r in at_end], rel=1e-7)
    assert history.history["learning_rate/group_1"] == pytest.approx(
        at_end, rel=1e-7)


def test_looks_through_loss_scale_optimizer():
    keras.config.set_dtype_policy("mixed_float16")
    model, body, mid, head = _model()
    model.compile(optimizer=difflr.LRMultiplier("sgd", {body: 0.5}),
                  loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = _data()
    history = model.fit(
        x, y, epochs=1, verbose=0,
        callbacks=[difflr.callbacks.LearningRateLogger([[body], [mid, head]])])
    assert history.history["learning_rate/group_0"] == [F32(0.01) * 0.5]
    assert history.history["learning_rate/group_1"] == [F32(0.01)]


def test_default_groups_are_difflr_groups():
    model, body, mid, head = _model()
    count = len(difflr.groups(model))
    assert count == 3  # body, mid, head: one group per depth
    model.compile(optimizer=difflr.LRMultiplier("sgd"), loss="mse")
    x, y = _data()
    history = model.fit(x, y, epochs=1, verbose=0,
                        callbacks=[difflr.callbacks.LearningRateLogger()])
    for g in range(count):
        assert history.history[f"learning_rate/group_{g}"] == [F32(0.01)]
    with pytest.raises(ValueError, match=f"1 names \\['all'\\] for {count} "
                       "groups"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            difflr.callbacks.LearningRateLogger(names=["all"])])


def test_errors_name_the_culprit():
    model, body, mid, head = _model()
    Logger = difflr.callbacks.LearningRateLogger
    with pytest.raises(ValueError, match="2 names for 3 groups"):
        Logger([[body], [mid], [head]], names=["a", "b"])
    with pytest.raises(ValueError, match=r"names \['a', 'a'\] repeat"):
        Logger([[body], [head]], names=["a", "a"])
    with pytest.raises(ValueError, match="non-empty string; received 3"):
        Logger([[body], [head]], names=["a", 3])
    with pytest.raises(TypeError, match="`names` must be a list of strings"):
        Logger([[body], [head]], names="ab")
    x, y = _data()
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="LearningRateLogger needs the model "
                       "to be compiled with a difflr.LRMultiplier"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[Logger([[body]])])
    model.compile(optimizer=difflr.LRMultiplier("sgd"), loss="mse")
    with pytest.raises(ValueError, match="'body/kernel' is in group 0 "
                       r"\(layer 'body'\) and again in group 1"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[Logger([[body], [body, head]])])


def _value(schedule, step):
    return float(np.asarray(keras.ops.convert_to_numpy(
        keras.ops.cast(schedule(step), "float32"))))


def test_a_multiplier_that_follows_a_schedule_is_logged_at_the_base_rates_step():
    """At an epoch's end both the base rate and the multipliers are at the
    step the next update runs at: `iterations`."""
    model, body, mid, head = _model()
    base = keras.optimizers.schedules.CosineDecay(0.1, 12)
    ramp = difflr.schedules.Ramp(start=1, steps=4, value=0.5)
    cosine = keras.optimizers.schedules.CosineDecay(3.0, 8)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(base), {body: ramp, mid: cosine})
    model.compile(optimizer=opt, loss="mse")
    x, y = _data()
    with pytest.warns(UserWarning, match=r"'learning_rate/group_1' \(CosineDecay "
                      r"at 3 now, 1\)"):
        history = model.fit(
            x, y, batch_size=2, epochs=3, verbose=0, shuffle=False,  # 2 steps an epoch
            callbacks=[difflr.callbacks.LearningRateLogger([body, [mid, head]])])
    steps = [2, 4, 6]
    assert history.history["learning_rate/group_0"] == pytest.approx(
        [_value(base, t) * _value(ramp, t) for t in steps], rel=1e-7)
    # The group logs the largest of its curves: the cosine, then 1 once below.
    assert history.history["learning_rate/group_1"] == pytest.approx(
        [_value(base, t) * max(_value(cosine, t), 1.0) for t in steps], rel=1e-7)
    assert [_value(cosine, t) > 1 for t in steps] == [True, True, False]
