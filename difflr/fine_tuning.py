"""`fine_tune`: fastai's two-phase fine-tuning recipe on a compiled model."""

import keras
import numpy as np

from difflr import _checks
from difflr import _unfreezing
from difflr import grouping
from difflr import recipes
from difflr.lr_multiplier import find_lr_multiplier
from difflr.schedules import _curves
from difflr.schedules.one_cycle import OneCycle

_WHO = "difflr.fine_tune"


def fine_tune(model, x=None, y=None, *, epochs, base_lr=2e-3, freeze_epochs=1,
              lr_mult=100.0, pct_start=0.3, div=5.0, div_final=1e5,
              groups=None, train_bn=True, callbacks=None, **fit_kwargs):
    """Fine-tunes a pretrained model the fastai way: head first, then all.

    fastai's `Learner.fine_tune`, on a model compiled with a
    `difflr.LRMultiplier`, in two calls to `model.fit`:

    1. `freeze_epochs` epochs with every group but the head frozen (their
       multipliers at 0; with `train_bn`, their normalization layers keep
       training at 0.1), the head at multiplier 1, and the base rate on a
       one-cycle schedule peaking at `base_lr` (fastai's
       `fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99)`):

           lr(t) = OneCycle(base_lr, T1, pct_start=0.99, div=25, div_final)(t)

    2. `epochs` epochs with every group unfrozen at discriminative rates
       spaced geometrically over `lr_mult` (`difflr.discriminative(groups,
       lr=slice(hi / lr_mult, hi))` with `hi = base_lr / 2`: group `i` of
       `n` at `lr_mult ** -((n - 1 - i) / (n - 1))`, the head at 1), and the
       base rate on a second one-cycle peaking at `hi` (fastai's
       `fit_one_cycle(epochs, slice(hi / lr_mult, hi), pct_start, div)`):

           lr(t) = OneCycle(base_lr / 2, T2, pct_start, div, div_final)(t)

    where `T1`, `T2` are the phases' numbers of steps and `t` counts each
    phase's steps from 0. Every variable trains at `lr(t) * m_v`.

    The model keeps its loss, metrics and optimizer: nothing is recompiled,
    and the optimizer state of the head carries over from phase 1 to phase 2
    as in fastai. Freezing is done by multipliers set after the optimizer is
    built (`difflr.callbacks.GradualUnfreezing` does it), so every group has
    optimizer state and phase 2 can unfreeze it. `fine_tune` owns the base
    learning rate (set before every step from the one-cycle) and the
    learning-rate multipliers of every variable (the compiled ones are
    replaced); it leaves the base rate at the last step's value and the
    multipliers at phase 2's. The wrapped optimizer must have a plain float
    learning rate, not a `LearningRateSchedule`, and the callbacks you pass
    should not change them too.

    Args:
        model (keras.Model): A built Keras model compiled with a
            `difflr.LRMultiplier` optimizer (possibly inside a
            `LossScaleOptimizer`).
        x (Any): Input data, as for `model.fit`.
        y (Any): Target data, as for `model.fit`.
        epochs (int): Number of epochs of phase 2 (all groups), at least 1.
        base_lr (float): The peak base rate of phase 1; phase 2 peaks at half
            of it. Defaults to `2e-3` (fastai's).
        freeze_epochs (int): Number of epochs of phase 1 (head only), 0 to skip
            it. Defaults to 1.
        lr_mult (float): Ratio of the head's rate to the bottom group's in
            phase 2, at least 1. Defaults to 100.
        pct_start (float): The fraction of phase 2 spent rising. Defaults to
            0.3.
        div (float): Phase 2 starts at `base_lr / 2 / div`. Defaults to 5.
        div_final (float): Both phases end at their peak over `div_final`.
            Defaults to `1e5`.
        groups (list | None): The groups, bottom to head: lists of layers
            covering every trainable variable once. Defaults to
            `difflr.groups(model)`.
        train_bn (bool): Whether normalization layers in the frozen groups keep
            training in phase 1 (at 0.1, as in fastai). Defaults to True.
        callbacks (list[keras.callbacks.Callback] | None): Optional list of
            Keras callbacks, given to both phases.
        **fit_kwargs (Any): Passed to both calls of `model.fit` (`batch_size`,
            `validation_data`, `steps_per_epoch`, `verbose`, ...), except
            `epochs` and `initial_epoch`, which `fine_tune` sets: phase 1 is
            epochs `0 .. freeze_epochs - 1`, phase 2 the next `epochs`.

    Returns:
        keras.callbacks.History: Both phases together: `history.epoch` runs
        over all `freeze_epochs + epochs` epochs, and each list in
        `history.history` holds phase 1's values, then phase 2's, with the base
        rate of each epoch's last step as `"learning_rate"`.

    Raises:
        ValueError, TypeError: if an argument is invalid, if the model is not
            compiled with a `difflr.LRMultiplier` whose learning rate can be
            set, if a group was frozen when the optimizer was built (so it
            cannot be unfrozen), or if the number of steps per epoch is
            unknown (pass `steps_per_epoch`).

    Example:

    >>> import keras, numpy as np, difflr
    >>> inputs = keras.Input((4,))
    >>> body = keras.layers.Dense(8, activation="relu", name="body")
    >>> head = keras.layers.Dense(1, name="head")
    >>> model = keras.Model(inputs, head(body(inputs)))
    >>> model.compile(difflr.LRMultiplier(keras.optimizers.Adam()), loss="mse")
    >>> history = difflr.fine_tune(model, np.ones((16, 4)), np.zeros((16, 1)),
    ...                            epochs=2, base_lr=1e-3, batch_size=8,
    ...                            verbose=0)
    >>> history.epoch
    [0, 1, 2]
    >>> round(model.optimizer.multiplier_for(body.kernel), 6)  # 1 / lr_mult
    0.01
    """
    epochs = _checks.integer(epochs, "epochs", _WHO, minimum=1)
    freeze_epochs = _checks.integer(freeze_epochs, "freeze_epochs", _WHO)
    base_lr = _checks.number(base_lr, "base_lr", _WHO, low=0, low_open=True)
    lr_mult = _checks.number(lr_mult, "lr_mult", _WHO, low=1)
    if not isinstance(train_bn, bool):
        raise TypeError(f"{_WHO}: `train_bn` must be True or False; received "
                        f"{train_bn!r}.")
    for name in ("epochs", "initial_epoch"):
        if name in fit_kwargs:
            raise TypeError(
                f"{_WHO} sets `{name}` of `model.fit` itself (phase 1 is "
                "epochs 0 .. freeze_epochs - 1, phase 2 the next `epochs`); "
                f"remove `{name}={fit_kwargs[name]!r}`."
            )
    if callbacks is None:
        callbacks = []
    elif isinstance(callbacks, keras.callbacks.Callback) or not isinstance(
            callbacks, (list, tuple)):
        raise TypeError(f"{_WHO}: `callbacks` must be a list of Keras "
                        f"callbacks; received {callbacks!r}.")
    # The one-cycle of each phase (fastai's fit_one_cycle defaults but for
    # these), checked before any training.
    one_cycles = [
        dict(max_lr=base_lr, pct_start=0.99, div_final=div_final),
        dict(max_lr=base_lr / 2, pct_start=pct_start, div=div,
             div_final=div_final),
    ]
    for kwargs in one_cycles:
        OneCycle(total_steps=1, **kwargs)

    grouping.check_model(model, _WHO)
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"{_WHO}: the model '{model.name}' is not compiled. Compile it "
            "first, e.g. `model.compile(optimizer=difflr.LRMultiplier("
            "keras.optimizers.Adam()), loss=...)`: fine_tune keeps your loss, "
            "metrics and optimizer."
        )
    opt = find_lr_multiplier(model.optimizer, _WHO)
    groups = grouping.groups(model) if groups is None else grouping.check_groups(
        groups, _WHO, model=model)
    if len(groups) < 2:
        raise ValueError(
            f"{_WHO} needs at least two groups (a body to freeze and a head); "
            f"the model '{model.name}' has {len(groups)}. Pass `groups=`."
        )
    # Keras refuses to set a rate given as a schedule: find out now.
    try:
        opt.learning_rate = base_lr / 25.0
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{_WHO} drives the base learning rate itself (a one-cycle "
            "schedule from `base_lr`), so the wrapped optimizer needs a "
            "plain float learning rate, not a schedule. Compile with e.g. "
            f"`keras.optimizers.Adam()` inside the LRMultiplier. ({e})"
        ) from None
    hi = base_lr / 2
    # Both phases: frozen (but for the head) before epoch freeze_epochs,
    # everything at its rate from then on.
    schedule = [freeze_epochs] * (len(groups) - 1)
    phases = [
        (recipes.discriminative(groups, lr=slice(base_lr)), 0, freeze_epochs),
        (recipes.discriminative(groups, lr=slice(hi / lr_mult, hi)),
         freeze_epochs, freeze_epochs + epochs),
    ]
    histories = []
    for (rates, first, last), kwargs in zip(phases, one_cycles):
        if first == last:
            continue
        unfreezing = _unfreezing.Unfreezing(
            groups, every=None, schedule=schedule, multipliers=rates,
            ramp_epochs=0, train_bn=train_bn, verbose=0, who=_WHO)
        histories.append(model.fit(
            x, y, initial_epoch=first, epochs=last,
            callbacks=[unfreezing, _BaseRateOneCycle(last - first, kwargs)]
            + list(callbacks),
            **fit_kwargs))
    return _joined(model, histories)


class _BaseRateOneCycle(keras.callbacks.Callback):
    """Sets the base rate before every step from a one-cycle over the fit,
    and logs it at the end of every epoch as `"learning_rate"`.

    The model is already compiled with a float learning rate (an optimizer
    variable), so writing it per step works inside the compiled step on
    every backend with no retracing, as Keras's `LearningRateScheduler` does
    per epoch. The values are computed once, for all the steps.
    """

    def __init__(self, epochs, one_cycle_kwargs):
        super().__init__()
        self.epochs, self.one_cycle_kwargs = epochs, one_cycle_kwargs

    def on_train_begin(self, logs=None):
        steps = self.params.get("steps")
        if not steps:
            raise ValueError(
                f"{_WHO} needs the number of steps per epoch to lay out the "
                "one-cycle schedule, and Keras cannot tell it for this data "
                "(a generator or a dataset of unknown size). Pass "
                "`steps_per_epoch=`."
            )
        total = steps * self.epochs
        schedule = OneCycle(total_steps=total, **self.one_cycle_kwargs)
        # On the host, in NumPy: one backend op per step would be slow, and
        # JAX would compile each op anew for every length.
        self._rates = _curves.one_cycle(np, np.arange(total, dtype="float32"),
                                        schedule).tolist()
        self._step = 0

    def on_train_batch_begin(self, batch, logs=None):
        # Through `self.model` each time: on JAX that syncs the state, so the
        # write reaches the next step.
        opt = find_lr_multiplier(self.model.optimizer, _WHO)
        opt.learning_rate = self._rates[min(self._step, len(self._rates) - 1)]
        self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        # As Keras's LearningRateScheduler does: History and TensorBoard get
        # the base rate of the epoch's last step.
        if logs is not None:
            logs["learning_rate"] = self._rates[min(self._step, len(self._rates)) - 1]


def _joined(model, histories):
    """One History of the phases, epoch after epoch."""
    history = keras.callbacks.History()
    history.set_model(model)
    history.epoch = [e for h in histories for e in h.epoch]
    keys = list(dict.fromkeys(k for h in histories for k in h.history))
    history.history = {k: [v for h in histories for v in h.history.get(k, [])]
                       for k in keys}
    history.params = histories[-1].params
    return history
