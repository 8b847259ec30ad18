"""difflr.fine_tune: fastai's head-then-everything recipe, checked by numbers."""

import numpy as np
import pytest
import keras

import difflr
from conftest import to_numpy
from difflr.schedules import OneCycle
from test_gradual_unfreezing import Recorder, data, mlp, mlp_sgd_reference
from test_schedules import _fastai_one_cycle


def test_head_phase_then_discriminative_phase_match_a_numpy_reference():
    x, y = data()
    model, groups = mlp()
    initial = [to_numpy(v).copy() for v in model.trainable_variables]
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.SGD(0.5)),
                  loss="mse")
    recorder = Recorder(groups)
    history = difflr.fine_tune(
        model, x, y, epochs=2, base_lr=0.2, freeze_epochs=1, batch_size=8,
        shuffle=False, verbose=0, callbacks=[recorder])

    # Phase 1 (2 steps): only the head, one-cycle to 0.2 with pct_start 0.99.
    phase1 = [[0.0, 0.0, _fastai_one_cycle(t, 2, 0.2, pct_start=0.99)]
              for t in range(2)]
    # Phase 2 (4 steps): discriminative over lr_mult=100 from hi = 0.1.
    rules = difflr.discriminative(groups, lr=slice(0.1 / 100, 0.1))
    mults = [rules[g[0]] for g in groups]
    np.testing.assert_allclose(mults, [0.01, 0.1, 1.0], rtol=1e-12)
    phase2 = [[_fastai_one_cycle(t, 4, 0.1, pct_start=0.3, div=5.0) * m
               for m in mults] for t in range(4)]
    expected = mlp_sgd_reference(initial, x, y, phase1 + phase2)

    # After the head-only epoch the body is bit-identical, the head moved.
    after_phase1 = recorder.weights[0]
    for i in range(4):
        np.testing.assert_array_equal(after_phase1[i], initial[i])
    for i in range(6):
        np.testing.assert_allclose(after_phase1[i], expected[1][i], rtol=1e-5,
                                   atol=1e-7, err_msg=f"phase 1, variable {i}")
        np.testing.assert_allclose(to_numpy(model.trainable_variables[i]),
                                   expected[-1][i], rtol=1e-4, atol=1e-6,
                                   err_msg=f"end, variable {i}")
    # The multipliers are exactly discriminative's, variable by variable.
    opt = model.optimizer
    for group, m in zip(groups, mults):
        for v in group[0].trainable_variables:
            assert opt.multiplier_for(v) == m
    assert recorder.multipliers == [[0.0, 0.0, 1.0], mults, mults]
    assert history.epoch == [0, 1, 2]
    np.testing.assert_allclose(history.history["learning_rate"], [
        phase1[1][2], phase2[1][2], phase2[3][2]], rtol=1e-5)
    assert len(history.history["loss"]) == 3


def test_normalization_layers_train_in_the_head_phase_with_train_bn():
    x, y = data()
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,))
    body = keras.layers.Dense(6, name="body")
    bn = keras.layers.BatchNormalization(name="bn")
    head = keras.layers.Dense(2, name="head")
    model = keras.Model(inputs, head(bn(body(inputs))))
    model.compile(optimizer=difflr.LRMultiplier(keras.optimizers.Adam()), loss="mse")
    initial = {v.path: to_numpy(v).copy() for v in model.trainable_variables}

    class Phase1(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                opt = self.model.optimizer
                self.multipliers = [opt.multiplier_for(v) for v in
                                    (body.kernel, bn.gamma, head.kernel)]
                self.weights = {v.path: to_numpy(v).copy()
                                for v in self.model.trainable_variables}

    phase1 = Phase1()
    difflr.fine_tune(model, x, y, epochs=1, base_lr=0.01, batch_size=8,
                     verbose=0, callbacks=[phase1])
    # difflr.groups keeps the BatchNormalization with its Dense: one group.
    assert phase1.multipliers == [0.0, 0.1, 1.0]  # fastai's slice(base_lr)
    np.testing.assert_array_equal(phase1.weights["body/kernel"], initial["body/kernel"])
    assert not np.array_equal(phase1.weights["bn/gamma"], initial["bn/gamma"])
    assert model.optimizer.multiplier_for(body.kernel) == pytest.approx(0.01)


def test_freeze_epochs_0_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    x, y = data()
    model, groups = mlp()
    model.compile(optimizer=difflr.LRMultiplier("adam"), loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = difflr.fine_tune(model, x, y, epochs=1, freeze_epochs=0,
                               lr_mult=4.0, batch_size=8, verbose=0)
    assert history.epoch == [0]
    opt = model.optimizer.inner_optimizer
    assert [opt.multiplier_for(g[0].kernel) for g in groups] == pytest.approx(
        [0.25, 0.5, 1.0])
    last = _fastai_one_cycle(1, 2, 1e-3, pct_start=0.3, div=5.0)
    assert float(to_numpy(opt.learning_rate)) == pytest.approx(last, rel=1e-5)


def test_errors_name_the_problem():
    x, y = data()
    model, groups = mlp()

    def run(optimizer="keep", **kwargs):
        if optimizer != "keep":
            model.compile(optimizer=optimizer, loss="mse")
        kwargs.setdefault("epochs", 1)
        difflr.fine_tune(model, x, y, batch_size=8, verbose=0, **kwargs)

    with pytest.raises(ValueError, match=r"is not compiled"):
        run()
    for kwargs, error, match in [
        ({"epochs": 0}, ValueError, r"difflr.fine_tune: `epochs` must be an integer >= 1"),
        ({"freeze_epochs": -1}, ValueError, r"`freeze_epochs` must be an integer >= 0"),
        ({"lr_mult": 0.5}, ValueError, r"`lr_mult` must be a finite number >= 1"),
        ({"base_lr": 0}, ValueError, r"`base_lr` must be a finite number > 0"),
        ({"pct_start": 1.0}, ValueError, r"`pct_start`"),
        ({"train_bn": 1}, TypeError, r"`train_bn` must be True or False"),
        ({"initial_epoch": 2}, TypeError, r"sets `initial_epoch` of `model.fit` itself"),
        ({"callbacks": keras.callbacks.History()}, TypeError, r"`callbacks` must be a list"),
    ]:
        with pytest.raises(error, match=match):
            run(**kwargs)
    with pytest.raises(TypeError, match=r"difflr.fine_tune needs the model to be "
                       r"compiled with a difflr.LRMultiplier"):
        run(optimizer="adam")
    with pytest.raises(TypeError, match=r"plain float learning rate, not a schedule"):
        run(optimizer=difflr.LRMultiplier(keras.optimizers.SGD(OneCycle(0.1, 10))))
    with pytest.raises(ValueError, match=r"difflr.fine_tune cannot unfreeze group 0 "
                       r"\(g0\).*keep_frozen_state=True"):
        run(optimizer=difflr.LRMultiplier("sgd", {groups[0][0]: 0.0}))
    with pytest.raises(ValueError, match=r"needs at least two groups"):
        run(optimizer=difflr.LRMultiplier("sgd"),
            groups=[[g[0] for g in groups]])

    def batches():
        while True:
            yield x[:8], y[:8]

    model.compile(optimizer=difflr.LRMultiplier("sgd"), loss="mse")
    with pytest.raises(ValueError, match=r"Pass `steps_per_epoch=`"):
        difflr.fine_tune(model, batches(), epochs=1, shuffle=False, verbose=0)
