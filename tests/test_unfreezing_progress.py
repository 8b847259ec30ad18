"""Gradual unfreezing's progress is checkpointed with the optimizer.

A run interrupted and resumed through `BackupAndRestore`, a `.keras` file or
an Orbax checkpoint, with a fresh model, optimizer and callback made with the
same arguments, ends bit for bit where the uninterrupted run does; a second
callback after a run that stopped early trains the groups at their rates.
"""

import os

import numpy as np
import pytest
import keras

import difflr
from conftest import backend, to_numpy
from difflr.callbacks import GradualUnfreezing
from test_gradual_unfreezing import Recorder, data, mlp
from test_plateau_unfreezing import Script

EPOCHS = 7
# A plateau at 1 (g1 opens at 3), another at 4 (g0 opens at 6).
VALUES = [1.0, 0.8, 0.9, 0.7, 0.6, 0.65, 0.5]


class Preempt(keras.callbacks.Callback):
    """Raises after the first batch of epoch `at`, as a preempted job dies."""

    def __init__(self, at):
        super().__init__()
        self.at, self.epoch = at, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.at:
            raise RuntimeError("preempted")


def _model(compiled_rates=True):
    """The mlp with Adam, compiled with rates that float32 does not hold
    exactly (1 / 2.6 ...), so that any rounding of them shows."""
    model, groups = mlp()
    g0, g1, _ = (g[0] for g in groups)
    rules = {g0: 1 / 2.6 ** 2, g1: 1 / 2.6} if compiled_rates else None
    # Named, so that the variables' paths (which Orbax restores by) do not
    # depend on how many optimizers this process made before.
    adam = keras.optimizers.Adam(0.02, name="adam")
    model.compile(optimizer=difflr.LRMultiplier(adam, rules), loss="mse")
    return model, groups


def _callback(groups, mode, multipliers=None, **kwargs):
    if mode == "epoch":
        return GradualUnfreezing(groups, schedule=[1, 3], ramp_epochs=2,
                                 multipliers=multipliers, **kwargs)
    return GradualUnfreezing(groups, monitor="val_loss", patience=1,
                             ramp_epochs=1, multipliers=multipliers, **kwargs)


def _fit(model, callbacks, mode, groups, initial_epoch=0):
    x, y = data()
    recorder = Recorder(groups)
    script = [Script(VALUES)] if mode == "plateau" else []
    model.fit(x, y, batch_size=8, epochs=EPOCHS, initial_epoch=initial_epoch,
              shuffle=False, verbose=0,
              callbacks=script + callbacks + [recorder])
    return recorder


def _uninterrupted(mode, multipliers=None, **kwargs):
    model, groups = _model()
    rules = multipliers and multipliers(groups)
    recorder = _fit(model, [_callback(groups, mode, rules, **kwargs)], mode, groups)
    return model, recorder


def assert_same_state(model, reference):
    """Every weight and optimizer variable (the step count, Adam's moments,
    the multipliers, the progress) equal bit for bit."""
    for a, b in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=b.path)
    ours, theirs = model.optimizer.variables, reference.optimizer.variables
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=b.path)


def _discriminative(groups):
    return difflr.discriminative(groups, factor=2.6)


@pytest.mark.parametrize("mode", ["epoch", "plateau"])
@pytest.mark.parametrize("multipliers", [None, _discriminative],
                         ids=["compiled-rates", "given-rates"])
@pytest.mark.parametrize("at", [2, 4])
def test_backup_and_restore_resumes_a_preempted_run_bit_for_bit(tmp_path, mode, multipliers, at):
    reference, expected = _uninterrupted(mode, multipliers)
    if mode == "epoch":  # g1 opens at 1, ramping over 3 epochs; g0 at 3
        assert expected.multipliers[1][1] == pytest.approx(1 / 2.6 / 3)
    backup = os.path.join(tmp_path, "backup")

    model, groups = _model()
    rules = multipliers and multipliers(groups)
    with pytest.raises(RuntimeError, match="preempted"):
        _fit(model, [_callback(groups, mode, rules),
                     keras.callbacks.BackupAndRestore(backup), Preempt(at)],
             mode, groups)
    # A new process: the same code, run again.
    model, groups = _model()
    rules = multipliers and multipliers(groups)
    recorder = _fit(model, [_callback(groups, mode, rules),
                            keras.callbacks.BackupAndRestore(backup)], mode, groups)
    assert recorder.multipliers == expected.multipliers[at:]
    assert_same_state(model, reference)


@pytest.mark.parametrize("mode", ["epoch", "plateau"])
@pytest.mark.parametrize("at", [2, 4, 5])
def test_a_keras_file_resumes_with_a_new_callback_bit_for_bit(tmp_path, mode, at):
    reference, expected = _uninterrupted(mode)
    model, groups = _model()
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=at, shuffle=False, verbose=0,
              callbacks=([Script(VALUES)] if mode == "plateau" else [])
              + [_callback(groups, mode)])
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    groups = [[loaded.get_layer(name)] for name in ("g0", "g1", "head")]
    callback = _callback(groups, mode)  # multipliers=None, no set_state
    recorder = _fit(loaded, [callback], mode, groups, initial_epoch=at)
    assert recorder.multipliers == expected.multipliers[at:]
    if mode == "plateau":
        assert callback.opened_at == [6, 3, 0]
    assert_same_state(loaded, reference)


@pytest.mark.skipif(not hasattr(keras.callbacks, "OrbaxCheckpoint"),
                    reason="Keras's Orbax checkpoints came in Keras 3.13")
def test_an_orbax_checkpoint_resumes_bit_for_bit(tmp_path):
    reference, expected = _uninterrupted("plateau")
    at = 4
    directory = os.path.join(tmp_path, "orbax")
    model, groups = _model()
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=at, shuffle=False, verbose=0,
              callbacks=[Script(VALUES), _callback(groups, "plateau"),
                         keras.callbacks.OrbaxCheckpoint(
                             directory, save_freq="epoch",
                             save_on_background=False)])
    model, groups = _model()
    model.optimizer.build(model.trainable_variables)
    model.load_weights(directory)
    recorder = _fit(model, [_callback(groups, "plateau")], "plateau", groups,
                    initial_epoch=at)
    assert recorder.multipliers == expected.multipliers[at:]
    assert_same_state(model, reference)


def test_restore_best_weights_resumes_where_it_can_and_says_why_not(tmp_path):
    # Best epochs: 1 (phase 0, last epoch 2), then 3, 4, 4 (phase 1, from 3
    # to 5). Resuming after epoch 3 or 4 needs no copy (the best epoch is the
    # last: the checkpoint's weights are it); after epoch 2 or 5 it does.
    reference, expected = _uninterrupted("plateau", restore_best_weights=True)
    for at in (4, 6):
        backup = os.path.join(tmp_path, f"backup{at}")
        model, groups = _model()
        with pytest.raises(RuntimeError, match="preempted"):
            _fit(model, [_callback(groups, "plateau", restore_best_weights=True),
                         keras.callbacks.BackupAndRestore(backup), Preempt(at)],
                 "plateau", groups)
        model, groups = _model()
        callbacks = [_callback(groups, "plateau", restore_best_weights=True),
                     keras.callbacks.BackupAndRestore(backup)]
        if at == 4:
            recorder = _fit(model, callbacks, "plateau", groups)
            assert recorder.multipliers == expected.multipliers[at:]
            assert_same_state(model, reference)
        else:
            with pytest.raises(ValueError, match=r"restore_best_weights=True\) "
                               r"resumes a phase whose best epoch \(4\) is not "
                               r"its last \(5\).*`callback.set_state\(state\)`"):
                _fit(model, callbacks, "plateau", groups)


def test_a_checkpoint_listed_before_the_callback_is_refused_clearly(tmp_path):
    backup = os.path.join(tmp_path, "backup")
    model, groups = _model()
    with pytest.raises(RuntimeError, match="preempted"):
        _fit(model, [keras.callbacks.BackupAndRestore(backup),
                     _callback(groups, "plateau"), Preempt(3)], "plateau", groups)
    model, groups = _model()
    with pytest.raises(ValueError, match=r"last epoch is 1, so it must resume at "
                       r"epoch 2; this fit begins at epoch 3.*list "
                       r"GradualUnfreezing before it in `callbacks`"):
        _fit(model, [keras.callbacks.BackupAndRestore(backup),
                     _callback(groups, "plateau")], "plateau", groups)


def test_a_second_callback_after_an_early_stop_trains_at_the_compiled_rates():
    model, groups = _model()
    x, y = data()
    # The first run stops with g1 half-ramped and g0 frozen.
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[_callback(groups, "epoch")])
    opt = model.optimizer
    g0, g1, head = (g[0] for g in groups)
    assert opt.multiplier_for(g0.kernel) == 0.0
    assert 0 < opt.multiplier_for(g1.kernel) < 1 / 2.6
    # The rates the compiled rules give, from a fresh optimizer.
    compiled = difflr.LRMultiplier("sgd", {g0: 1 / 2.6 ** 2, g1: 1 / 2.6}).resolve(
        model.trainable_variables, model).multipliers
    rates = [compiled[0], compiled[2], compiled[4]]
    assert rates == [1 / 2.6 ** 2, 1 / 2.6, 1.0]
    recorder = Recorder(groups)
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[GradualUnfreezing(groups, every=1), recorder])
    assert recorder.multipliers == [
        [0.0, 0.0, 1.0], [0.0, rates[1], 1.0], [rates[0], rates[1], 1.0]]
    for v, b in zip(model.trainable_variables, before):
        assert not np.array_equal(to_numpy(v), b), v.path  # every group trained
    # A rate set by hand since the first run is the user's, not a leftover.
    opt.set_multipliers([(g0.kernel, 0.3)])
    recorder = Recorder(groups)
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[GradualUnfreezing(groups, every=1), recorder])
    assert recorder.multipliers[-1] == [0.3, rates[1], 1.0]


def test_an_optimizer_without_progress_still_refuses_to_guess(tmp_path):
    # As a file saved before the progress was kept: it loads zeros.
    model, groups = _model()
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[_callback(groups, "epoch")])
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for v in loaded.optimizer.variables[-2:]:
        assert "unfreezing" in v.path
        v.assign(np.zeros(v.shape, v.dtype))
    groups = [[loaded.get_layer(name)] for name in ("g0", "g1", "head")]
    with pytest.raises(ValueError, match=r"starts at epoch 2 .* `multipliers=None`"
                       r".*groups \[0, 1\] were still frozen or ramping.*holds no "
                       r"progress of a gradual unfreezing"):
        loaded.fit(x, y, batch_size=8, initial_epoch=2, epochs=3, verbose=0,
                   callbacks=[_callback(groups, "epoch")])
