"""GradualUnfreezing(monitor=...): groups open on a plateau of a metric.

The monitored values are scripted (a callback placed before GradualUnfreezing
writes them into the logs), so every phase change is exact.
"""

import os
import pickle
import re

import numpy as np
import pytest
import keras

import difflr
from conftest import to_numpy
from difflr.callbacks import GradualUnfreezing
from test_gradual_unfreezing import Recorder, assert_groups_open_at, data, mlp


class Script(keras.callbacks.Callback):
    """Writes `values[epoch]` into the logs as `key` at every epoch end."""

    def __init__(self, values, key="val_loss"):
        super().__init__()
        self.values, self.key = values, key

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


class WeightsAtBegin(keras.callbacks.Callback):
    """All the model's weights at the start of every epoch (placed after
    GradualUnfreezing, so after any restore)."""

    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.weights[epoch] = [to_numpy(v).copy() for v in self.model.weights]


def _fit(values, epochs=None, key="val_loss", metrics=None, optimizer=None,
         extra=(), **kwargs):
    x, y = data()
    model, groups = mlp()
    model.compile(optimizer=optimizer or difflr.LRMultiplier(keras.optimizers.SGD(0.05)),
                  loss="mse", metrics=metrics)
    callback = GradualUnfreezing(groups, monitor=key, **kwargs)
    recorder = Recorder(groups)
    history = model.fit(x, y, batch_size=8, epochs=epochs or len(values),
                        shuffle=False, verbose=0,
                        callbacks=[Script(values, key), callback, recorder,
                                   *extra])
    return model, groups, callback, recorder, history


@pytest.mark.parametrize("values, kwargs, opened_at", [
    # min: improvements must exceed min_delta=0.05 (0.9 -> 0.87 -> 0.86 is a
    # plateau of 2 epochs); each phase starts afresh (5.0 is its best).
    ([1.0, 0.9, 0.87, 0.86, 5.0, 4.0, 3.96, 3.0, 3.0, 2.951, 9.0],
     dict(patience=2, min_delta=0.05), [10, 4, 0]),
    # The same with mode="min" given, and a change of exactly min_delta
    # (2.0 -> 1.5, min_delta 0.5) is no improvement.
    ([2.0, 1.5, 1.5, 7.0, 1.0, 0.9, 0.8, 0.1],
     dict(patience=2, min_delta=0.5, mode="min"), [7, 3, 0]),
    # patience=0 acts as 1, as in EarlyStopping; a phase lasts >= 2 epochs.
    ([1.0] * 6, dict(), [4, 2, 0]),
    # Never a plateau long enough: nothing opens.
    ([3.0, 2.0, 2.0, 1.0, 1.0, 0.5], dict(patience=2), [None, None, 0]),
])
def test_groups_open_when_the_monitored_value_stops_improving(values, kwargs, opened_at):
    _, _, callback, recorder, history = _fit(values, **kwargs)
    assert callback.opened_at == opened_at
    # Logged every epoch: how many groups below the head trained in it.
    expected = [sum(u is not None and u <= e for u in opened_at[:-1])
                for e in range(len(values))]
    assert history.history["unfrozen_groups"] == expected
    # And the multipliers follow: a group trains from the epoch it opened.
    assert recorder.multipliers == [
        [float(u is not None and u <= e) for u in opened_at] for e in range(len(values))]


def test_max_mode_and_auto_mode():
    values = [0.5, 0.6, 0.6, 0.1, 0.2, 0.7, 0.65, 0.7]
    _, _, callback, _, _ = _fit(values, key="val_auc", mode="max")
    assert callback.opened_at == [7, 3, 0]
    # "auto": a compiled metric that goes up (accuracy) is maximized...
    _, _, callback, _, _ = _fit(values, key="val_accuracy", metrics=["accuracy"])
    assert callback.opened_at == [7, 3, 0]
    # ... and a loss minimized: the same values, read as a loss.
    _, _, callback, _, _ = _fit(values, key="val_loss", patience=1)
    assert callback.opened_at == [5, 2, 0]  # 0.6 > 0.5; then 0.1 < 0.2
    with pytest.raises(ValueError, match=r"`mode=\"auto\"` cannot tell whether "
                       r"`val_score` should go down or up.*mode=\"min\""):
        _fit(values, key="val_score")


def test_frozen_groups_do_not_move_until_they_open_then_train_at_their_rates():
    x, y = data()
    model, groups = mlp()
    initial = [to_numpy(v).copy() for v in model.trainable_variables]
    g0, g1, _ = (g[0] for g in groups)
    model.compile(optimizer=difflr.LRMultiplier(
        keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.01),
        {g0: 0.25, g1: 0.5}), loss="mse")
    callback = GradualUnfreezing(groups, monitor="val_loss", patience=1,
                                 min_delta=0.1)
    recorder = Recorder(groups)
    values = [1.0, 0.95, 0.5, 0.45, 0.45, 0.1]  # a plateau at 1, another at 3
    model.fit(x, y, batch_size=8, epochs=6, shuffle=False, verbose=0,
              callbacks=[Script(values), callback, recorder])
    unfreeze_at = callback.opened_at
    assert unfreeze_at == [4, 2, 0]
    assert recorder.multipliers == [[0.0, 0.0, 1.0]] * 2 + [[0.0, 0.5, 1.0]] * 2 + [
        [0.25, 0.5, 1.0]] * 2
    assert_groups_open_at(recorder, initial, x, y, unfreeze_at)


def test_restore_best_weights_restores_the_best_epoch_of_the_phase_bit_for_bit():
    # patience=2: the best of phase 0 is epoch 1, g1 opens at 4; the best of
    # phase 1 is epoch 5, g0 opens at 8.
    values = [1.0, 0.5, 0.7, 0.8, 2.0, 1.0, 1.5, 1.5, 0.1, 0.1]
    at_begin = WeightsAtBegin()
    model, _, callback, recorder, _ = _fit(
        values, patience=2, restore_best_weights=True, extra=[at_begin],
        optimizer=difflr.LRMultiplier(keras.optimizers.Adam(0.01)))
    assert callback.opened_at == [8, 4, 0]
    end = recorder.weights  # the trainable variables are all the weights here
    assert len(model.weights) == len(end[0])
    restored_from = {4: 1, 8: 5}
    for epoch in range(1, len(values)):
        source = end[restored_from.get(epoch, epoch - 1)]
        for w, s in zip(at_begin.weights[epoch], source):
            np.testing.assert_array_equal(w, s, err_msg=f"epoch {epoch}")
    # Restoring changed something: the last epochs of the phases were worse.
    assert not all(np.array_equal(a, b) for a, b in zip(end[3], end[1]))
    # Without it, the next phase starts from the last epoch's weights.
    at_begin2 = WeightsAtBegin()
    _, _, _, recorder2, _ = _fit(
        values, patience=2, extra=[at_begin2],
        optimizer=difflr.LRMultiplier(keras.optimizers.Adam(0.01)))
    for w, s in zip(at_begin2.weights[4], recorder2.weights[3]):
        np.testing.assert_array_equal(w, s)


def test_missing_monitor_and_bad_arguments_raise_clear_errors():
    x, y = data()
    model, groups = mlp()
    model.compile(optimizer=difflr.LRMultiplier("sgd"), loss="mse")
    with pytest.raises(ValueError, match=r"`monitor='val_loss'` is not in the logs "
                       r"of epoch 0; the keys available are \['loss'\]\. .*"
                       r"validation_data="):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[
            GradualUnfreezing(groups, monitor="val_loss")])
    with pytest.raises(ValueError, match=r"`monitor='val_mae'` is not in the logs"
                       r".*\['loss', 'val_loss'\]\.$"):
        model.fit(x, y, epochs=2, verbose=0, validation_data=(x, y), callbacks=[
            GradualUnfreezing(groups, monitor="val_mae")])
    for make, error, match in [
        (lambda: GradualUnfreezing(monitor="val_loss", every=2), ValueError,
         r"give either `monitor`.*or `every`/`schedule`.*received "
         r"monitor='val_loss' and every=2"),
        (lambda: GradualUnfreezing(monitor="val_loss", schedule=[1]), ValueError,
         r"received monitor='val_loss' and schedule=\[1\]"),
        (lambda: GradualUnfreezing(patience=3, restore_best_weights=True),
         ValueError, r"`patience`, `restore_best_weights` only apply .*pass "
         r"`monitor=`.*patience=3, restore_best_weights=True"),
        (lambda: GradualUnfreezing(monitor=3), TypeError, r"`monitor` must be the name"),
        (lambda: GradualUnfreezing(monitor="loss", patience=-1), ValueError,
         r"`patience` must be an integer >= 0"),
        (lambda: GradualUnfreezing(monitor="loss", min_delta=-0.1), ValueError,
         r"`min_delta` must be a finite number >= 0"),
        (lambda: GradualUnfreezing(monitor="loss", mode="up"), ValueError,
         r"`mode` must be \"auto\", \"min\" or \"max\"; received 'up'"),
        (lambda: GradualUnfreezing(monitor="loss", restore_best_weights=1),
         TypeError, r"`restore_best_weights` must be True or False"),
        (lambda: GradualUnfreezing(every=1).get_state(), ValueError,
         r"only the plateau-driven mode"),
    ]:
        with pytest.raises(error, match=match):
            make()


def _resumable(values, stop=None, state=None, initial_epoch=0, model=None):
    if model is None:
        model, _ = mlp()
        model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.Adam(0.02)),
                      loss="mse")
    groups = [[model.get_layer(name)] for name in ("g0", "g1", "head")]
    callback = GradualUnfreezing(groups, monitor="val_loss", patience=1,
                                 ramp_epochs=1, restore_best_weights=True,
                                 multipliers=difflr.discriminative(groups, factor=2.0))
    if state is not None:
        callback.set_state(state)
    recorder = Recorder(groups)
    x, y = data()
    model.fit(x, y, batch_size=8, initial_epoch=initial_epoch,
              epochs=stop or len(values), shuffle=False, verbose=0,
              callbacks=[Script(values), callback, recorder])
    return model, callback, recorder


@pytest.mark.parametrize("stop", [3, 5, 6])
def test_resuming_after_load_model_continues_exactly(tmp_path, stop):
    # g1 opens at 3 (restoring epoch 1), g0 at 6 (restoring epoch 4).
    values = [1.0, 0.8, 0.9, 0.7, 0.6, 0.65, 0.5, 0.4, 0.3]
    model, callback, recorder = _resumable(values)
    assert callback.opened_at == [6, 3, 0]
    assert recorder.multipliers[2:8] == [  # ramp_epochs=1
        [0.0, 0.0, 1.0], [0.0, 0.25, 1.0], [0.0, 0.5, 1.0], [0.0, 0.5, 1.0],
        [0.125, 0.5, 1.0], [0.25, 0.5, 1.0]]

    interrupted, callback2, _ = _resumable(values, stop=stop)
    path = os.path.join(tmp_path, "m.keras")
    interrupted.save(path)
    with open(os.path.join(tmp_path, "state.pkl"), "wb") as f:
        pickle.dump(callback2.get_state(), f)
    with open(os.path.join(tmp_path, "state.pkl"), "rb") as f:
        state = pickle.load(f)
    assert state["last_epoch"] == stop - 1

    loaded = keras.models.load_model(path)
    _, callback3, recorder3 = _resumable(values, state=state,
                                         initial_epoch=stop, model=loaded)
    assert callback3.opened_at == callback.opened_at
    assert recorder3.multipliers == recorder.multipliers[stop:]
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=b.path)

    # The state must be resumed right after its last epoch.
    with pytest.raises(ValueError, match=rf"state whose last epoch is {stop - 1}, "
                       rf"so it must resume at epoch {stop}; this fit begins at "
                       rf"epoch 0\. Pass `initial_epoch={stop}`"):
        _resumable(values, state=state, model=keras.models.load_model(path))
    # Its best weights are needed while a restore is pending.
    if state["best_epoch"] != state["last_epoch"]:
        with pytest.raises(ValueError, match=r"must hold its weights"):
            GradualUnfreezing(monitor="val_loss", restore_best_weights=True
                              ).set_state(dict(state, best_weights=None))


def test_verbose_lines_number_epochs_as_keras_prints_them(capsys):
    # Keras heads each epoch with `Epoch N/M`, N from 1, and logs its
    # val_loss; the callback's lines carry Keras's N, and each line for a
    # group names the `opened_at` entry (from 0) it sets.
    values = [1.0, 0.5, 0.7, 0.8, 2.0, 1.0, 1.5, 1.5, 0.1, 0.1]
    x, y = data()
    model, groups = mlp()
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.Adam(0.01)), loss="mse")
    callback = GradualUnfreezing(groups, monitor="val_loss", patience=2,
                                 restore_best_weights=True, verbose=1)
    capsys.readouterr()
    model.fit(x, y, batch_size=8, epochs=len(values), shuffle=False, verbose=2,
              callbacks=[Script(values), callback])
    lines = capsys.readouterr().out.splitlines()
    keras_val_loss = {}  # Keras's epoch number -> the val_loss it printed
    for header, log in zip(lines, lines[1:]):
        if re.fullmatch(r"Epoch \d+/10", header):
            n = int(header[6:-3])
            keras_val_loss[n] = float(re.search(r"val_loss: (\S+)", log).group(1))
    assert sorted(keras_val_loss) == list(range(1, 11))
    opened, restored = [], []
    for i, line in enumerate(lines):
        if m := re.fullmatch(r"Epoch (\d+): GradualUnfreezing unfreezes group (\d) "
                             r"\(g\d\); opened_at\[(\d)\] = (\d+)\.", line):
            n, group, entry, epoch = map(int, m.groups())
            assert lines[i + 1] == f"Epoch {n}/10"  # Keras's header follows
            assert group == entry and epoch == callback.opened_at[group] == n - 1
            opened.append(group)
        elif m := re.fullmatch(r"Epoch (\d+): GradualUnfreezing restores the weights "
                               r"of epoch (\d+), the best of the phase that ended "
                               r"\(val_loss = (\S+)\)\.", line):
            n, best, value = int(m.group(1)), int(m.group(2)), float(m.group(3))
            assert keras_val_loss[best] == value  # Keras's number of that epoch
            restored.append((n, best))
    assert callback.opened_at == [8, 4, 0]
    assert opened == [1, 0] and restored == [(5, 2), (9, 6)]
