"""`lr_find`: the learning-rate range test, with every multiplier held."""

import dataclasses
import math
import warnings

import keras
import numpy as np
from keras import ops

from difflr import _checks
from difflr import _keras_compat
from difflr.lr_multiplier import find_lr_multiplier

_WHO = "difflr.lr_find"
# `model.fit` arguments that `lr_find` sets itself, or that have no place in
# a sweep of training steps.
_OWN_FIT_ARGS = (
    "epochs", "initial_epoch", "steps_per_epoch", "verbose", "validation_data",
    "validation_split", "validation_steps", "validation_freq",
    "validation_batch_size",
)
_SUGGESTIONS = ("valley", "steep", "minimum")


@dataclasses.dataclass(repr=False)
class LRFindResult:
    """What `difflr.lr_find` measured, and the rates it suggests.

    Attributes:
        learning_rates (list[float]): The base learning rate of each step run:
            `start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))` for step
            `i`. Each variable trained at this rate times its multiplier.
        losses (list[float]): The smoothed training loss after each step
            (fastai's debiased exponential moving average).
        raw_losses (list[float]): The training loss of each step's batch.
        suggestions (dict[str, float | None]): A dict from `"valley"`,
            `"steep"` and `"minimum"` to the base rate each of fastai's rules
            suggests (a float), or to `None` when the sweep ran too few steps
            to judge (see `difflr.lr_find`).
        suggestion_points (dict[str, tuple[float, float]]): A dict from the
            same names to the `(learning rate, smoothed loss)` point each rule
            picked on the curve, as fastai's rules return it: for `minimum`,
            the lowest point itself, ten times the suggested rate. Empty when
            the suggestions are `None`.
        stopped_early (bool): Whether the sweep stopped before `num_steps`
            because the smoothed loss diverged (above 4 times its minimum, or
            NaN). False when all `num_steps` ran, even if the last one
            diverged, and when a user callback stopped training (then the repr
            says so).
        num_steps (int): The number of steps asked for.
    """

    learning_rates: list
    losses: list
    raw_losses: list
    suggestions: dict
    suggestion_points: dict
    stopped_early: bool
    num_steps: int

    def __repr__(self):
        found = ", ".join(
            f"{name}={'None' if value is None else format(value, '.3g')}"
            for name, value in self.suggestions.items())
        if self.stopped_early:
            how = "stopped early: diverged"
        elif len(self.learning_rates) < self.num_steps:
            how = "stopped early by a callback"
        else:
            how = "complete"
        return (f"LRFindResult({len(self.learning_rates)} of {self.num_steps} "
                f"steps, {how}; {found})")

    def plot(self, ax=None, skip_end=5):
        """Plots the smoothed loss against the base rate, with suggestions.

        As fastai's `plot_lr_find`: a log-scaled rate axis, the last
        `skip_end` steps left out (where the loss takes off), and a marker
        for each suggestion. Each marker stands at the rate its legend gives,
        the one in `suggestions` (for `minimum`, a tenth of the rate at the
        lowest loss, not the lowest point, which fastai marks), at the
        height of the curve there (interpolated in `log(lr)`; the first
        loss, if the rate is below the sweep's).

        Args:
            ax (matplotlib.axes.Axes | None): Optional matplotlib `Axes` to
                draw on. Defaults to a new figure.
            skip_end (int): Number of last steps not to draw, an integer >= 0.
                Defaults to 5.

        Returns:
            matplotlib.axes.Axes: The `Axes` drawn on.
        """
        import matplotlib.pyplot as plt

        skip_end = _checks.integer(skip_end, "skip_end", "LRFindResult.plot")
        if ax is None:
            _, ax = plt.subplots()
        end = max(len(self.losses) - skip_end, min(len(self.losses), 2))
        ax.plot(self.learning_rates[:end], self.losses[:end])
        ax.set_xscale("log")
        ax.set_xlabel("Base learning rate")
        ax.set_ylabel("Loss (smoothed)")
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"][1:]
        for name, color in zip(self.suggestion_points, colors):
            rate = self.suggestions[name]
            ax.plot([rate], [self._loss_at(name, rate)], "o", color=color,
                    label=f"{name}: {rate:.2e}")
        if self.suggestion_points:
            ax.legend(loc="best")
        return ax

    def _loss_at(self, name, rate):
        """The smoothed loss at `rate` on the recorded curve."""
        lr, loss = self.suggestion_points[name]
        if lr == rate:  # the rule picked a recorded point: its own loss
            return loss
        lrs = np.asarray(self.learning_rates, "float64")
        losses = np.asarray(self.losses, "float64")
        finite = np.isfinite(losses)
        return float(np.interp(np.log(rate), np.log(lrs[finite]),
                               losses[finite]))


def lr_find(model, x, y=None, *, start_lr=1e-7, end_lr=10.0, num_steps=100,
            stop_div=True, beta=0.98, batch_size=None, verbose=1,
            **fit_kwargs):
    """The learning-rate range test (Leslie Smith; fastai's `lr_find`).

    Trains `model` for up to `num_steps` steps while the BASE learning rate
    grows exponentially from `start_lr` to `end_lr`,

        lr_i = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))

    (step `i` from 0; the last step runs at exactly `end_lr`, where fastai's
    last step runs one step short of it), every variable at `lr_i` times
    its multiplier: each group keeps its ratio to the others, and frozen
    variables (multiplier 0) stay frozen. A multiplier that follows a
    schedule is held at its value at the sweep's first step (the
    optimizer's current `iterations`) for the whole sweep, as if it were
    that constant: the sweep measures the base rate with the ratios of that
    step, which the schedules would otherwise move under it (a group whose
    schedule is 0 there, say a body before its warm-up, does not train in
    the sweep; to sweep with the ratios of another step, `set_multipliers`
    them as constants first). It records the loss of each step's
    batch and smooths it as fastai does, a debiased exponential moving
    average:

        avg_i = beta * avg_{i-1} + (1 - beta) * loss_i,  avg_{-1} = 0
        smoothed_i = avg_i / (1 - beta ** (i + 1))

    and, with `stop_div`, stops after the first step whose smoothed loss is
    above 4 times the lowest so far (fastai's rule) or is NaN. Then it puts
    everything back exactly as it was: the model's variables (weights,
    normalization statistics, random seed states), every optimizer variable
    (slots, `iterations`, the multipliers and the schedules they follow, a
    loss scale) and the learning rate, a float or a `LearningRateSchedule`.

    The suggestions are fastai's rules, applied as fastai applies them to
    the smoothed losses of the steps from `num_steps // 10` to the sixth
    from last (the first steps barely move, the last ones take off), cut at
    the first NaN or infinite loss. Indices below count in that window:

    - `valley`: the longest stretch of the curve going down: with `L` the
      length of the longest strictly decreasing subsequence of the losses
      (fastai's O(n^2) search) and `end` the first index where one of that
      length ends, the rate at index `end - L + int(L / 3) + int(L / 6)`,
      about half-way down the valley, well before its bottom (index 0 if
      the losses never go down, or if that index is -1: a valley of 2
      points at the start, where fastai's index reads the window's last
      point). fastai's default, usually the best of three.
    - `steep`: the rate where the loss falls fastest per unit of
      `log(lr)`: the argmin of `(loss[i+1] - loss[i]) / (log lr[i+1] -
      log lr[i])`, at `lr[i]`.
    - `minimum`: a tenth of the rate at the lowest loss: the loss is lowest
      just before it diverges, so one order of magnitude lower is a safe
      rate.

    A value is `None` if fewer than 2 steps are left to judge (run at least
    `num_steps // 10 + 7` steps: with 5 steps or fewer none is left).
    `result.stopped_early` is True only if the sweep diverged before its
    last step.

    The model must be built and compiled with a `difflr.LRMultiplier`
    (inside a `LossScaleOptimizer` too), with `steps_per_execution=1`. An
    optimizer that is not built yet is built first, as `fit` would build it.
    With a float learning rate the rate is set before each step, with no
    retracing. With a `LearningRateSchedule` the schedule is replaced for the
    sweep by one over the optimizer's step counter and put back afterwards
    from its config (an equal copy: a custom schedule must be registered as
    serializable), and the train function is traced anew for the sweep and
    after it.

    Data: as for `model.fit`. Arrays, datasets of known size and
    `keras.utils.PyDataset`s are read again from the start if they hold
    fewer than `num_steps` batches; a generator must yield enough batches.
    The sweep uses `model.fit` (one step per epoch), so random draws (the
    shuffling, dropout's seed) are consumed as by any fit; the model's seed
    states are restored.

    Args:
        model (keras.Model): A built Keras model compiled with a
            `difflr.LRMultiplier`.
        x (Any): Input data, as for `model.fit`.
        y (Any): Target data, as for `model.fit`.
        start_lr (float): The first base rate, a number > 0. Defaults to 1e-7.
        end_lr (float): The last base rate, a number > `start_lr`. Defaults to
            10.
        num_steps (int): The number of steps, an integer >= 2. Defaults to 100.
        stop_div (bool): Whether to stop when the smoothed loss diverges.
            Defaults to True.
        beta (float): The smoothing factor, in `[0, 1)` (0: no smoothing).
            Defaults to 0.98, fastai's.
        batch_size (int | None): As for `model.fit`.
        verbose (int): 0 for silence, 1 for a progress bar of the sweep (with
            the base rate and the smoothed loss), 2 for one line at the end.
            Defaults to 1.
        **fit_kwargs (Any): Passed to `model.fit` (`shuffle`, `sample_weight`,
            `class_weight`, `callbacks`...). Callbacks that change the learning
            rate or the multipliers would spoil the sweep.

    Returns:
        LRFindResult: The rates, the smoothed and raw losses, and the
        suggestions; `result.plot()` draws them.

    Raises:
        TypeError: if `model` is not a Keras model, it is not compiled with
            a `difflr.LRMultiplier`, an argument has the wrong type, or a
            schedule cannot be put back from its config.
        ValueError: if `model` is not built or not compiled, a number is out
            of range (`start_lr >= end_lr`, `num_steps < 2`, ...), the
            model runs several steps per execution, `fit_kwargs` sets what
            `lr_find` sets, or the data runs out.

    Example:

    >>> import keras, numpy as np, difflr
    >>> keras.utils.set_random_seed(0)
    >>> inputs = keras.Input((4,))
    >>> body = keras.layers.Dense(8, activation="relu", name="body")
    >>> model = keras.Model(inputs, keras.layers.Dense(1, name="head")(body(inputs)))
    >>> # Weights from NumPy's seeded draws: the same result on every backend.
    >>> model.set_weights([np.random.rand(*w.shape) - 0.5 for w in model.get_weights()])
    >>> model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.01), {body: 0.1}),
    ...               loss="mse")
    >>> x = np.random.rand(64, 4)
    >>> y = x.sum(axis=1, keepdims=True)
    >>> result = difflr.lr_find(model, x, y, batch_size=16, start_lr=1e-4,
    ...                         end_lr=100.0, num_steps=40, shuffle=False, verbose=0)
    >>> result
    LRFindResult(30 of 40 steps, stopped early: diverged; valley=0.0203,
    steep=0.0838, minimum=0.0492)
    >>> result.learning_rates[:2]
    [0.0001, 0.000142...]
    >>> round(float(model.optimizer.learning_rate), 6)  # put back, as the rest
    0.01
    >>> ax = result.plot()
    """
    start_lr = _checks.number(start_lr, "start_lr", _WHO, low=0, low_open=True)
    end_lr = _checks.number(end_lr, "end_lr", _WHO, low=0, low_open=True)
    if start_lr >= end_lr:
        raise ValueError(
            f"{_WHO}: `start_lr` must be below `end_lr` (the sweep grows the "
            f"rate from one to the other); received start_lr={start_lr:g}, "
            f"end_lr={end_lr:g}."
        )
    num_steps = _checks.integer(num_steps, "num_steps", _WHO, minimum=2)
    beta = _checks.number(beta, "beta", _WHO, low=0, high=1, high_open=True)
    if not isinstance(stop_div, bool):
        raise TypeError(f"{_WHO}: `stop_div` must be True or False; received "
                        f"{stop_div!r}.")
    verbose = _checks.integer(verbose, "verbose", _WHO)
    for name in _OWN_FIT_ARGS:
        if name in fit_kwargs:
            raise ValueError(
                f"{_WHO} sets `{name}` itself (one training step per epoch, "
                f"`num_steps` of them, no validation, `verbose=` for its own "
                f"progress bar); remove `{name}={fit_kwargs[name]!r}`."
            )
    callbacks = fit_kwargs.pop("callbacks", None) or []
    if isinstance(callbacks, keras.callbacks.Callback) or not isinstance(
            callbacks, (list, tuple)):
        raise TypeError(f"{_WHO}: `callbacks` must be a list of Keras "
                        f"callbacks; received {callbacks!r}.")
    if x is None:
        raise ValueError(f"{_WHO}: `x` is None: give the training data, as "
                         "for `model.fit`.")
    opt = _check_model(model)

    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    schedule_config = opt.inner_optimizer.get_config().get("learning_rate")
    schedule = None
    if isinstance(schedule_config, dict):
        schedule = _schedule_from_config(schedule_config)
    rates = [start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
             for i in range(num_steps)]
    rates[-1] = end_lr  # exactly, whatever the rounding of the power

    saved = _Snapshot(model)
    history = getattr(model, "history", None)
    sweep = _Sweep(rates, set_rate=schedule is None, stop_div=stop_div,
                   beta=beta, verbose=verbose)
    try:
        _hold_schedules(opt)
        if schedule is None:
            try:
                opt.learning_rate = rates[0]
            except (TypeError, ValueError, AttributeError) as e:
                raise TypeError(
                    f"{_WHO} sets the base learning rate before each step, and "
                    f"this optimizer's cannot be set ({e}). Compile with a "
                    "float learning rate or a LearningRateSchedule."
                ) from None
        else:
            first_step = int(ops.convert_to_numpy(opt.iterations))
            opt.learning_rate = _ExponentialSweep(start_lr, end_lr, num_steps,
                                                  first_step)
            model.make_train_function(force=True)
        model.fit(x, y, batch_size=batch_size, epochs=num_steps,
                  steps_per_epoch=1, verbose=0,
                  callbacks=[sweep] + list(callbacks), **fit_kwargs)
    finally:
        if schedule is not None:
            opt.learning_rate = schedule
            model.make_train_function(force=True)
        saved.restore()
        model.stop_training = False
        if history is not None:
            model.history = history
        sweep.finish()
    if sweep.ran_out:
        raise ValueError(
            f"{_WHO}: the data ran out after {len(sweep.raw_losses)} of "
            f"{num_steps} steps. Give data that can be read again (arrays, a "
            "dataset of known size, a PyDataset), one that repeats (e.g. "
            "`dataset.repeat()`), or fewer `num_steps`. The model and the "
            "optimizer were restored."
        )
    n = len(sweep.raw_losses)
    suggestions, points = suggest(rates[:n], sweep.losses, num_steps)
    return LRFindResult(
        learning_rates=rates[:n], losses=list(sweep.losses),
        raw_losses=list(sweep.raw_losses), suggestions=suggestions,
        suggestion_points=points,
        # A divergence at the last step stops nothing: all steps ran.
        stopped_early=sweep.diverged and n < num_steps, num_steps=num_steps)


def _check_model(model):
    """The `LRMultiplier` `model` is compiled with, or raises."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{_WHO}: `model` must be a compiled Keras model; received "
            f"{model!r} of type {type(model).__name__}."
        )
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"{_WHO}: the model '{model.name}' is not compiled. Compile it "
            "first, e.g. `model.compile(optimizer=difflr.LRMultiplier("
            "keras.optimizers.Adam(), multipliers), loss=...)`: lr_find "
            "sweeps the base rate of that optimizer."
        )
    if not model.built:
        raise ValueError(
            f"{_WHO}: the model '{model.name}' is not built, so there are no "
            "weights to restore after the sweep. Build it first (give it an "
            "`Input`, or call it on a batch)."
        )
    opt = find_lr_multiplier(model.optimizer, _WHO)
    steps = getattr(model, "steps_per_execution", 1) or 1
    if int(steps) != 1:
        raise ValueError(
            f"{_WHO} sets the rate before every step, and the model '"
            f"{model.name}' runs {steps} steps per execution "
            "(`steps_per_execution`): compile it with `steps_per_execution=1` "
            "for the sweep."
        )
    return opt


def _hold_schedules(opt):
    """Puts every multiplier that follows a schedule at its value now, as a
    constant, for the sweep. The snapshot puts the schedules back (a state
    the optimizer was in comes back with its rules: `set_multipliers`)."""
    variables = _keras_compat.built_variables(opt)
    lr = [(v, opt.multiplier_for(v)) for v in variables
          if opt.schedule_for(v) is not None]
    decay = [(v, opt.decay_multiplier_for(v)) for v in variables
             if opt.decay_schedule_for(v) is not None]
    if lr or decay:
        with warnings.catch_warnings():
            # (decay multipliers held as they are, weight decay or not)
            warnings.filterwarnings("ignore", "LRMultiplier got decay multipliers")
            opt.set_multipliers(lr or None, decay or None)


def _schedule_from_config(config):
    """An equal copy of the schedule, to put back after the sweep."""
    try:
        schedule = keras.optimizers.schedules.deserialize(config)
        again = keras.optimizers.schedules.serialize(schedule)
    except Exception as e:  # any failure of a user's class
        raise TypeError(
            f"{_WHO} replaces the learning-rate schedule during the sweep and "
            "puts it back from its config, and this schedule cannot be "
            f"rebuilt from its config ({type(e).__name__}: {e}). Register its "
            "class with `@keras.saving.register_keras_serializable()` and "
            "give it a `get_config`, or compile with a float learning rate "
            "for the sweep."
        ) from None
    if again != config:
        raise TypeError(
            f"{_WHO}: the learning-rate schedule does not come back the same "
            "from its config (its `get_config` leaves something out), so it "
            "could not be put back after the sweep. Compile with a float "
            "learning rate for the sweep."
        )
    return schedule


class _ExponentialSweep(keras.optimizers.schedules.LearningRateSchedule):
    """The sweep as a schedule over the optimizer's step counter."""

    def __init__(self, start_lr, end_lr, num_steps, first_step):
        self.start_lr, self.end_lr = start_lr, end_lr
        self.num_steps, self.first_step = num_steps, first_step

    def __call__(self, step):
        k = ops.cast(step, "float32") - float(self.first_step)
        k = ops.clip(k, 0.0, float(self.num_steps - 1))
        ratio = float(self.end_lr / self.start_lr)
        return self.start_lr * ops.power(ratio, k / float(self.num_steps - 1))

    def get_config(self):
        return {"start_lr": self.start_lr, "end_lr": self.end_lr,
                "num_steps": self.num_steps, "first_step": self.first_step}


class _Snapshot:
    """Copies of every variable of the model and its optimizer."""

    def __init__(self, model):
        self.variables = list(model.variables) + list(model.optimizer.variables)
        # np.array copies: on torch, convert_to_numpy shares the memory.
        self.values = [np.array(ops.convert_to_numpy(v)) for v in self.variables]

    def restore(self):
        for v, value in zip(self.variables, self.values):
            v.assign(value)


class _Sweep(keras.callbacks.Callback):
    """Sets the base rate before each step (float rates), records the loss
    after it, smooths it, and stops the fit when it diverges."""

    def __init__(self, rates, set_rate, stop_div, beta, verbose):
        super().__init__()
        self.rates, self.set_rate = rates, set_rate
        self.stop_div, self.beta = stop_div, beta
        self.raw_losses, self.losses = [], []
        self.diverged = self.ran_out = False
        self._average, self._best = 0.0, math.inf
        self._in_epoch = False
        self._bar = keras.utils.Progbar(
            len(rates), verbose=verbose, unit_name="step",
            stateful_metrics=["lr", "loss"]) if verbose else None

    def on_epoch_begin(self, epoch, logs=None):
        self._in_epoch = False

    def on_train_batch_begin(self, batch, logs=None):
        if self.set_rate:
            # Through `self.model` each time: on JAX that syncs the training
            # state, so the write reaches the next step.
            opt = self.model.optimizer
            while isinstance(opt, keras.optimizers.LossScaleOptimizer):
                opt = opt.inner_optimizer
            opt.learning_rate = self.rates[len(self.raw_losses)]

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "loss" not in logs:
            raise ValueError(
                f"{_WHO} reads the training loss after each step, and the "
                "model's logs have no 'loss' (a custom `train_step` must "
                f"return it); logs: {sorted(logs or {})}."
            )
        self._in_epoch = True
        loss = float(np.asarray(ops.convert_to_numpy(logs["loss"])))
        step = len(self.raw_losses)
        self.raw_losses.append(loss)
        self._average = self.beta * self._average + (1 - self.beta) * loss
        smoothed = self._average / (1 - self.beta ** (step + 1))
        self.losses.append(smoothed)
        if smoothed < self._best:
            self._best = smoothed
        if self._bar is not None:
            self._bar.update(step + 1, [("lr", self.rates[step]),
                                        ("loss", smoothed)])
        if self.stop_div and (math.isnan(smoothed) or smoothed > 4 * self._best):
            self.diverged = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        # No step ended in this epoch: the data ran out (JAX and TensorFlow
        # begin a batch before they find out).
        if not self._in_epoch:
            self.ran_out = True
            self.model.stop_training = True

    def finish(self):
        if self._bar is not None and len(self.raw_losses) < len(self.rates):
            self._bar.update(len(self.raw_losses), finalize=True)


def suggest(learning_rates, losses, num_steps):
    """fastai's `valley`, `steep` and `minimum` on a recorded sweep.

    Args:
        learning_rates: The rates of the steps run.
        losses: Their smoothed losses.
        num_steps: The number of steps asked for (the first `num_steps // 10`
            are left out, as fastai does).

    Returns:
        `(suggestions, points)`: dicts from the rule names to the suggested
        rate (or `None`) and to the `(rate, loss)` point each picked.
    """
    # The end clipped at 0: with fewer than 5 steps, `len - 5` would count
    # from the end and judge the points it means to leave out.
    window = slice(num_steps // 10, max(len(losses) - 5, 0))
    lrs = np.asarray(learning_rates[window], "float64")
    values = np.asarray(losses[window], "float64")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        lrs, values = lrs[:bad[0]], values[:bad[0]]
    if len(values) < 2:
        return dict.fromkeys(_SUGGESTIONS), {}
    suggestions, points = {}, {}
    for name, rule in (("valley", _valley), ("steep", _steep),
                       ("minimum", _minimum)):
        suggestions[name], points[name] = rule(lrs, values)
    return suggestions, points


def _valley(lrs, losses):
    # fastai's loop as it is, including where it records the start of the
    # longest run (when its end first becomes the longest).
    n = len(losses)
    max_start = max_end = 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    # fastai's index is -1 for a longest run of 2 ending at index 1 (its
    # start is recorded one before the run); numpy would read the last point.
    idx = max(max_start + int(sections) + int(sections / 2), 0)
    return float(lrs[idx]), (float(lrs[idx]), float(losses[idx]))


def _steep(lrs, losses):
    grads = (losses[1:] - losses[:-1]) / (np.log(lrs[1:]) - np.log(lrs[:-1]))
    idx = int(np.argmin(grads))
    return float(lrs[idx]), (float(lrs[idx]), float(losses[idx]))


def _minimum(lrs, losses):
    idx = int(np.argmin(losses))
    return float(lrs[idx]) / 10, (float(lrs[idx]), float(losses[idx]))
