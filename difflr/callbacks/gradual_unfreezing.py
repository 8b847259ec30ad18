"""Gradual unfreezing (ULMFiT; Lightning's BackboneFinetuning) by multipliers."""

from difflr import _unfreezing

_WHO = "GradualUnfreezing"


class GradualUnfreezing(_unfreezing.Unfreezing):
    """Unfreezes the model one group at a time, from the head down.

    Training starts with every group but the head (the last group) frozen,
    and one more group, from the top down, is unfrozen every `every` epochs
    (ULMFiT's gradual unfreezing), at the epochs `schedule` gives
    (Lightning's `BackboneFinetuning`), or when a monitored metric stops
    improving (`monitor=`, finetuning-scheduler's phases; see **Unfreezing
    on a plateau** below). Freezing is done with learning-rate
    multipliers inside one compiled `model.fit`: nothing is recompiled, and
    the groups already training keep their optimizer state.

    Group `j` of `n` (0 = bottom, `n - 1` = head) unfreezes at epoch

        U_j = every * (n - 1 - j)            (with `every`)
        U_j = schedule[n - 2 - j]            (with `schedule`; a group the
                                              schedule does not reach stays
                                              frozen)

    and in epoch `e` its variable `v`, whose rate once unfrozen is `m_v`,
    trains with the multiplier

        0                                    if e < U_j
        m_v * min(1, (e - U_j + 1) / (ramp_epochs + 1))    otherwise

    so with `ramp_epochs=r` a newly unfrozen group reaches its full rate in
    `r + 1` linear steps, one per epoch (the head is never frozen or
    ramped). The multipliers are set at the start of each epoch and are a
    function of the epoch number and the arguments only, so a run resumed
    with `fit(initial_epoch=k)` continues exactly as the uninterrupted one.

    **Unfreezing on a plateau** (`monitor=`, instead of `every`/`schedule`).
    The epochs `U_j` are then decided during training, with the conventions
    of Keras's `EarlyStopping` (`min_delta`, `patience`, `mode`). Training
    runs in phases: phase 0 trains the head from the first epoch `P_0`; phase
    `p` begins at the epoch `P_p` at which its group opens. With `x_e` the
    value of `monitor` in the logs at the end of epoch `e`, the best value
    of the phase and its epoch start afresh at the phase's first epoch and
    follow (in `mode="min"`; in `"max"`, `x_e > b + min_delta`)

        b, e* = x_e, e        at e = P_p, or if x_e < b - min_delta
        (unchanged)           otherwise

    (an improvement is a change of more than `min_delta`, and NaN is none).
    When, at the end of epoch `e`, `e - e* >= max(patience, 1)` (as in
    `EarlyStopping`, `patience=0` acts as 1), the topmost group still frozen
    opens at the start of the next epoch, `U_j = P_{p+1} = e + 1`, and the
    new phase counts from there. A phase so lasts at least
    `max(patience, 1) + 1` epochs, at most one group opens per epoch, and
    `ramp_epochs` ramps an opened group as above (its ramp may overlap the
    next phase). Once every group is open the callback decides no more: to
    stop on the last phase's plateau, add `keras.callbacks.EarlyStopping`.
    `mode="auto"` infers the direction as `EarlyStopping` does (`loss` and
    `val_loss` go down; a compiled metric goes the way it declares) and
    raises if it cannot. A `monitor` missing from the logs of an epoch is an
    error naming it and the keys there are (`EarlyStopping` only warns, but
    here it would leave the groups frozen in silence): validate every epoch.

    With `restore_best_weights=True`, at the start of the epoch a group
    opens, before it trains, the model's weights (all of `model.weights`,
    normalization statistics included) are set back to those at the end of
    the best epoch `e*` of the phase that ended, as finetuning-scheduler
    restores each phase's best checkpoint. The optimizer state (Adam's
    moments, the step count) is not rolled back, as Keras's `EarlyStopping`
    (and fastai's `SaveModelCallback`, by default) do not: the step count drives the base-rate
    schedule and Adam's bias correction, so rewinding it would replay the
    schedule, and the moments are recent gradient statistics, still a good
    start for the next phase; a copy of the weights is kept in host memory.

    The epochs are reachable as `callback.opened_at`: a list, one entry per
    group bottom to head (as `groups`), of the epoch at which the group
    began to train, `None` for one that has not (the head's entry is the
    first epoch; after a fit, an entry one past its last epoch is a group
    decided on in that epoch, which a resumed fit opens). With `monitor`,
    every epoch's logs (so `History`,
    `CSVLogger`, TensorBoard) also get `"unfrozen_groups"`: the number of
    groups below the head that trained in that epoch.

    **Epoch numbers.** Every epoch the callback stores or takes (`U_j`,
    `opened_at`, `get_state`/`set_state`, its error messages) counts from 0,
    as `fit(initial_epoch=)` and `on_epoch_end(epoch)` do. The lines that
    `verbose=1` prints count from 1, as Keras's progress bar (`Epoch 6/14`)
    and its own callbacks print them (the restored weights are "of epoch
    5" when `best_epoch` is 4, as in `EarlyStopping`), and a group's line
    names the entry it sets: a group opening at epoch 5 prints `Epoch 6:
    GradualUnfreezing unfreezes group 2 (body2); opened_at[2] = 5.`

    **The rates once unfrozen** (`m_v`). With `multipliers=None` they are the
    multipliers the optimizer was compiled with, read when training begins
    (before the callback sets any to 0). To combine gradual unfreezing with
    discriminative rates, as ULMFiT does, compile with
    `difflr.discriminative(...)`, or give that rule map as `multipliers`:
    it is resolved against the model (variables it does not cover get 1.0, or
    their `difflr.layers` declaration) and replaces, for every variable, the
    multiplier it was compiled with.

    **Resuming.** The callback's progress (each variable's rate once
    unfrozen, the multiplier it last set, the epoch each group opened, and
    with `monitor` the phase's best value and epoch and the last epoch) is
    written into two variables of the `LRMultiplier` at the start and end
    of every epoch (never read by the training step), so whatever saves and
    restores the optimizer carries it: `keras.callbacks.BackupAndRestore`,
    `model.save` and `keras.models.load_model`, `save_weights` and
    `load_weights`, `keras.callbacks.OrbaxCheckpoint`. A fresh model,
    optimizer and callback made with the same arguments then continue
    exactly as the uninterrupted run (`BackupAndRestore` resumes by itself;
    after a load, `fit(initial_epoch=k)`), `multipliers=None` included. List
    this callback before `BackupAndRestore` or `ModelCheckpoint`, so that
    an epoch's checkpoint holds its plateau decision (resuming from one that
    does not raises an error that says so). A plateau-driven run resumes
    at the epoch after the checkpoint's last one, or, with a new callback,
    starts over from epoch 0; any other `initial_epoch` raises. The same
    callback object, given to a second `fit` of the same model, likewise
    continues from the optimizer's progress.

    With `multipliers=None`, the rates are read from that progress for
    every variable whose multiplier is still the value the recorded run
    left it at (a frozen group's 0, a ramp's fraction), so a second
    callback after a run that stopped early trains the groups at their
    rates; a multiplier changed since is taken as the rate. An optimizer
    with no progress (saved by an earlier difflr) that holds 0 or part of
    the rate for a group not yet fully open raises instead: pass
    `multipliers` then.

    With `restore_best_weights=True`, the copy of the best epoch's weights
    is too large for the optimizer and stays in host memory: a resume where
    the phase's best epoch is its last takes the checkpoint's weights (they
    are those), and any other raises. To resume it anyway, keep `state =
    callback.get_state()` from the end of the last epoch (a dict of
    `opened_at`, the last epoch, the current phase's best value and epoch,
    and the copy of the weights as NumPy arrays: save it with pickle next to
    the model), and give it to the fresh callback with
    `callback.set_state(state)` before `fit(initial_epoch=state["last_epoch"]
    + 1)`: a state given so wins over the optimizer's.
    `get_state` and `set_state` exist only with `monitor`.

    **Normalization layers** (BatchNormalization, LayerNormalization,
    GroupNormalization, RMSNormalization). With `train_bn=True` (the
    default, as fastai's), the scale and offset of the normalization layers
    inside frozen groups keep training at their rate `m_v`, unramped; with
    `train_bn=False` they freeze with their group. Either way the *moving
    statistics* of a BatchNormalization layer keep updating in training,
    frozen group or not, because a multiplier only stops the optimizer: as
    in fastai, only `layer.trainable = False` (set before compiling) puts a
    BatchNormalization layer in inference mode, and that also takes its
    scale and offset out of training for good.

    **Optimizer memory.** The callback freezes groups after the optimizer was
    built, so every group holds its optimizer state (Adam's moments, ...)
    from the start, frozen or not: that is what lets it unfreeze inside the
    same compiled `fit`. While a group is frozen, that state goes on as at
    learning rate 0 (see `difflr.LRMultiplier`): with Adam and its kin, its
    moments keep tracking the gradients, so it resumes with warm moments and
    the right bias correction. Only variables whose multiplier is 0 when the
    optimizer is built cost no optimizer memory, and they can never be
    unfrozen (unless `keep_frozen_state=True`): use that for what stays
    frozen for good, and this callback for what will train later.

    On the JAX backend the callback reaches the optimizer through
    `self.model.optimizer` at every change, which syncs the training state.
    It sets the multipliers of every variable of the groups at each epoch,
    replacing any `set_multipliers` of your own on them.

    Args:
        groups (list | None): The groups, bottom to head: a list whose items
            are lists of layers (or single layers), covering every trainable
            variable of the model once. Defaults to `difflr.groups(model)`.
        every (int | None): Unfreeze one more group every `every` epochs (a
            positive integer). Defaults to 1 (ULMFiT) when `schedule` is not
            given.
        schedule (list[int] | None): Instead of `every`, the epochs at which to
            unfreeze the groups below the head, top down: `schedule[i]`
            unfreezes group `n - 2 - i`. A non-decreasing list of non-negative
            integers, at most `n - 1` long (groups it does not reach stay
            frozen).
        multipliers (dict | list | None): Optional rule map (e.g.
            `difflr.discriminative(...)`) giving the rate of every variable
            once unfrozen. Defaults to the multipliers the optimizer has when
            training begins.
        ramp_epochs (int): Number of epochs over which a newly unfrozen group's
            multiplier rises linearly to its rate (a non-negative integer).
            Defaults to 0: the full rate at once.
        train_bn (bool): Whether normalization layers in frozen groups keep
            training (fastai's `train_bn`). Defaults to True.
        verbose (int): 1 prints a line when a group unfreezes (and when weights
            are restored). Defaults to 0.
        monitor (str | None): Instead of `every`/`schedule`, the name of a
            logged quantity (e.g. `"val_loss"`): a group opens when it stops
            improving. Defaults to None (epoch-driven).
        patience (int | None): With `monitor`, the number of epochs without
            improvement after which the next group opens (`max(patience, 1)`).
            Defaults to 0.
        min_delta (float | None): With `monitor`, the change (non-negative)
            that a value must exceed to count as an improvement. Defaults to 0.
        mode (str | None): With `monitor`, `"min"`, `"max"` or `"auto"`
            (inferred from the name, as Keras's `EarlyStopping`). Defaults to
            `"auto"`.
        restore_best_weights (bool | None): With `monitor`, whether to set the
            model's weights back to the best epoch of a phase before the next
            group opens. Defaults to False.

    Raises:
        TypeError: if an argument has the wrong type, or (when training
            begins) if the model is not compiled with a `difflr.LRMultiplier`
            (possibly inside a `LossScaleOptimizer`).
        ValueError: if `every`/`schedule` are invalid or both given, if
            `monitor` is given with `every` or `schedule`, if `patience`,
            `min_delta`, `mode` or `restore_best_weights` are given without
            `monitor`, if `monitor` is missing from an epoch's logs or
            `mode="auto"` cannot infer its direction, if a resumed fit does
            not begin right after the state's last epoch, if the
            groups are fewer than two, do not belong to the model or do not
            cover it, if the schedule has more epochs than groups to
            unfreeze, if a group that must be unfrozen was frozen when the
            optimizer was built (no optimizer state), if a run with
            `multipliers=None` resumes while a group is frozen on an
            optimizer with no recorded progress, if the optimizer's progress
            was recorded with other groups, or if a plateau-driven resume
            with `restore_best_weights=True` needs weights it does not hold.

    Example:

    >>> import keras, numpy as np, difflr
    >>> inputs = keras.Input((4,))
    >>> body1 = keras.layers.Dense(8, activation="relu", name="body1")
    >>> body2 = keras.layers.Dense(8, activation="relu", name="body2")
    >>> head = keras.layers.Dense(1, name="head")
    >>> model = keras.Model(inputs, head(body2(body1(inputs))))
    >>> groups = [[body1], [body2], [head]]
    >>> rates = difflr.discriminative(groups, factor=2.6)
    >>> model.compile(difflr.LRMultiplier(keras.optimizers.Adam(1e-3)),
    ...               loss="mse")
    >>> unfreeze = difflr.callbacks.GradualUnfreezing(groups, every=1,
    ...                                               multipliers=rates)
    >>> _ = model.fit(np.ones((8, 4)), np.zeros((8, 1)), epochs=2,
    ...               callbacks=[unfreeze], verbose=0)
    >>> opt = model.optimizer  # epoch 1 trained the head and body2
    >>> [round(opt.multiplier_for(layer.kernel), 4) for layer in (body1, body2, head)]
    [0.0, 0.3846, 1.0]

    On a plateau: here the base rate is 0, so the validation loss never
    improves and, with `patience=1`, each phase lasts two epochs.

    >>> unfreeze = difflr.callbacks.GradualUnfreezing(
    ...     groups, monitor="val_loss", patience=1, multipliers=rates)
    >>> model.compile(difflr.LRMultiplier(keras.optimizers.SGD(0.0)),
    ...               loss="mse")
    >>> data = (np.ones((8, 4)), np.zeros((8, 1)))
    >>> history = model.fit(*data, validation_data=data, epochs=5,
    ...                     callbacks=[unfreeze], verbose=0)
    >>> history.history["unfrozen_groups"]
    [0, 0, 1, 1, 2]
    >>> unfreeze.opened_at  # body1, body2, head
    [4, 2, 0]
    """

    def __init__(self, groups=None, every=None, schedule=None,
                 multipliers=None, ramp_epochs=0, train_bn=True, verbose=0,
                 monitor=None, patience=None, min_delta=None, mode=None,
                 restore_best_weights=None):
        super().__init__(groups, every, schedule, multipliers, ramp_epochs,
                         train_bn, verbose, who=_WHO, monitor=monitor,
                         patience=patience, min_delta=min_delta, mode=mode,
                         restore_best_weights=restore_best_weights)
