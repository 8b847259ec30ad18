"""Gradual unfreezing (ULMFiT; Lightning's BackboneFinetuning) by multipliers."""

import weakref

import keras

from difflr import _checks
from difflr import _keras_compat
from difflr import _rules
from difflr import grouping
from difflr.inspection import _group_variables
from difflr.lr_multiplier import _LR
from difflr.lr_multiplier import DECLARED_LR_ATTR
from difflr.lr_multiplier import find_lr_multiplier

_WHO = "GradualUnfreezing"


class GradualUnfreezing(keras.callbacks.Callback):
    """Unfreezes the model one group at a time, from the head down.

    Training starts with every group but the head (the last group) frozen,
    and one more group, from the top down, is unfrozen every `every` epochs
    (ULMFiT's gradual unfreezing) or at the epochs `schedule` gives
    (Lightning's `BackboneFinetuning`). Freezing is done with learning-rate
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

    **The rates once unfrozen** (`m_v`). With `multipliers=None` they are the
    multipliers the optimizer was compiled with, read when training begins
    (before the callback sets any to 0). To combine gradual unfreezing with
    discriminative rates, as ULMFiT does, compile with
    `difflr.discriminative(...)`, or give that rule map as `multipliers`:
    it is resolved against the model (variables it does not cover get 1.0, or
    their `difflr.layers` declaration) and replaces, for every variable, the
    multiplier it was compiled with.

    **Resuming after `keras.models.load_model`.** The saved optimizer holds 0
    for the groups that were still frozen, so their rates cannot be read back
    from it: pass `multipliers` explicitly when you may resume (a fresh
    callback with the same arguments and `fit(initial_epoch=k)` then
    continues exactly). With `multipliers=None`, resuming at an epoch where
    a group is still frozen or ramping raises an error that says so. The
    optimizer state of the frozen groups is saved and loaded with the model.

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
        groups: The groups, bottom to head: a list whose items are lists of
            layers (or single layers), covering every trainable variable of
            the model once. Defaults to `difflr.groups(model)`.
        every: Unfreeze one more group every `every` epochs (a positive
            integer). Defaults to 1 (ULMFiT) when `schedule` is not given.
        schedule: Instead of `every`, the epochs at which to unfreeze the
            groups below the head, top down: `schedule[i]` unfreezes group
            `n - 2 - i`. A non-decreasing list of non-negative integers, at
            most `n - 1` long (groups it does not reach stay frozen).
        multipliers: Optional rule map (e.g. `difflr.discriminative(...)`)
            giving the rate of every variable once unfrozen. Defaults to the
            multipliers the optimizer has when training begins.
        ramp_epochs: Number of epochs over which a newly unfrozen group's
            multiplier rises linearly to its rate (a non-negative integer).
            Defaults to 0: the full rate at once.
        train_bn: Whether normalization layers in frozen groups keep
            training (fastai's `train_bn`). Defaults to True.
        verbose: 1 prints a line when a group unfreezes. Defaults to 0.

    Raises:
        TypeError: if an argument has the wrong type, or (when training
            begins) if the model is not compiled with a `difflr.LRMultiplier`
            (possibly inside a `LossScaleOptimizer`).
        ValueError: if `every`/`schedule` are invalid or both given, if the
            groups are fewer than two, do not belong to the model or do not
            cover it, if the schedule has more epochs than groups to
            unfreeze, if a group that must be unfrozen was frozen when the
            optimizer was built (no optimizer state), or if a run with
            `multipliers=None` resumes while a group is frozen.

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
    """

    def __init__(self, groups=None, every=None, schedule=None,
                 multipliers=None, ramp_epochs=0, train_bn=True, verbose=0):
        super().__init__()
        if every is not None and schedule is not None:
            raise ValueError(
                f"{_WHO}: give `every` or `schedule`, not both; received "
                f"every={every!r}, schedule={schedule!r}."
            )
        if schedule is None:
            self.every = _checks.integer(1 if every is None else every,
                                         "every", _WHO, minimum=1)
            self.schedule = None
        else:
            self.every = None
            self.schedule = _check_schedule(schedule)
        if groups is not None:
            grouping.check_groups(groups, _WHO)  # the model is checked later
        self.groups = groups
        # Parsed now so that a bad rule map fails here, resolved at training.
        self._rules = None
        if multipliers is not None:
            try:
                self._rules = _rules.parse(multipliers, _LR)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{_WHO}(multipliers=...): {e}") from None
        self.multipliers = multipliers
        self.ramp_epochs = _checks.integer(ramp_epochs, "ramp_epochs", _WHO,
                                           minimum=0)
        if not isinstance(train_bn, bool):
            raise TypeError(f"{_WHO}: `train_bn` must be True or False; "
                            f"received {train_bn!r}.")
        self.train_bn = train_bn
        self.verbose = verbose
        self._plan = None  # set when training begins
        self._first_epoch = True
        self._who = _WHO  # `difflr.fine_tune` names itself in the errors

    # Keras calls these.

    def on_train_begin(self, logs=None):
        model = self.model  # on JAX this syncs the training state
        find_lr_multiplier(model.optimizer, self._who)  # fail now, not in an epoch
        plan = self._plan
        if plan is None or plan.model() is not model:
            self._plan = _Plan(model, self, self._who)
        built_optimizer(model, self._who)
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._plan is None:
            self.on_train_begin()
        plan = self._plan
        opt = find_lr_multiplier(self.model.optimizer, self._who)
        if self._first_epoch:
            self._first_epoch = False
            if plan.targets is None:
                plan.capture_targets(opt, epoch)
            plan.check_unfreezable(opt)
        values = plan.values_at(epoch)
        opt.set_multipliers(list(zip(plan.variables, values)))
        if self.verbose:
            for j in plan.unfrozen_at(epoch):
                names = ", ".join(layer.name for layer in plan.groups[j])
                print(f"\nEpoch {epoch + 1}: {self._who} unfreezes group {j} "
                      f"({names}).")


def built_optimizer(model, who):
    """The model's `LRMultiplier`, built for its trainable variables.

    The TensorFlow backend builds the optimizer in the first traced step,
    after `on_train_begin` and `on_epoch_begin`; JAX and torch build it
    before. Multipliers can only be read and set once it is built, so build
    it now, as Keras does under a distribution strategy (through
    `model.optimizer`, so that a `LossScaleOptimizer` builds its own state).
    """
    opt = find_lr_multiplier(model.optimizer, who)
    if not opt.built:
        model.optimizer.build(model.trainable_variables)
    return opt


def _check_schedule(schedule):
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, (list, tuple)):
        raise TypeError(
            f"{_WHO}: `schedule` must be a list of epochs (integers), one per "
            f"group to unfreeze, top down; received {schedule!r}."
        )
    epochs = [_checks.integer(e, f"schedule[{i}]", _WHO, minimum=0)
              for i, e in enumerate(schedule)]
    for i in range(1, len(epochs)):
        if epochs[i] < epochs[i - 1]:
            raise ValueError(
                f"{_WHO}: `schedule` must not decrease (groups unfreeze from "
                f"the head down, each no earlier than the one above it); "
                f"received {list(schedule)!r}, where schedule[{i}] = "
                f"{epochs[i]} < schedule[{i - 1}] = {epochs[i - 1]}."
            )
    return epochs


class _Plan:
    """The groups of one model, and the multipliers of each epoch.

    `variables` lists the trainable variables group by group; `group_of[k]`
    is the group of `variables[k]`; `targets[k]` its multiplier once
    unfrozen. Everything `values_at(epoch)` returns is a function of the
    epoch and of these, so that a resumed run sets exactly what the
    uninterrupted one did.
    """

    def __init__(self, model, callback, who):
        self.model = weakref.ref(model)
        self.who = who
        per_group = _group_variables(model, callback.groups, who, complete=True)
        n = len(per_group)
        if n < 2:
            raise ValueError(
                f"{who} needs at least two groups (the head, and something to "
                f"unfreeze below it); the model '{model.name}' has {n}. Pass "
                "`groups=` to split it yourself."
            )
        self.groups = [list(dict.fromkeys(layer for layer, _ in pairs))
                       for pairs in per_group]
        if callback.schedule is not None:
            if len(callback.schedule) > n - 1:
                raise ValueError(
                    f"{who}: `schedule` gives {len(callback.schedule)} epochs "
                    f"but there are only {n - 1} groups below the head to "
                    f"unfreeze ({n} groups in all)."
                )
            top_down = list(callback.schedule) + [None] * (n - 1 - len(callback.schedule))
        else:
            top_down = [callback.every * (i + 1) for i in range(n - 1)]
        self.unfreeze_epoch = top_down[::-1] + [0]  # bottom first; head at 0
        self.variables, self.group_of = [], []
        for g, pairs in enumerate(per_group):
            for _, v in pairs:
                self.variables.append(v)
                self.group_of.append(g)
        normalization = {
            id(v)
            for layer in _keras_compat.nested_layers(model)
            if isinstance(layer, grouping.NORMALIZATION_LAYERS)
            for v in layer.trainable_variables
        }
        self.always_on = [
            self.group_of[k] == n - 1
            or (callback.train_bn and id(v) in normalization)
            for k, v in enumerate(self.variables)
        ]
        self.ramp_epochs = callback.ramp_epochs
        self.targets = None
        if callback._rules is not None:
            try:
                values, _ = _rules.resolve(
                    list(model.trainable_variables), callback._rules, _LR,
                    model, None, DECLARED_LR_ATTR)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{who}(multipliers=...): {e}") from None
            by_id = {id(v): m for v, m in zip(model.trainable_variables, values)}
            self.targets = [by_id[id(v)] for v in self.variables]

    def fraction(self, g, epoch):
        """How much of its rate group `g` trains at in `epoch` (0 to 1)."""
        start = self.unfreeze_epoch[g]
        if start is None or epoch < start:
            return 0.0
        return min(1.0, (epoch - start + 1) / (self.ramp_epochs + 1))

    def values_at(self, epoch):
        return [
            m if on else m * self.fraction(g, epoch)
            for m, g, on in zip(self.targets, self.group_of, self.always_on)
        ]

    def unfrozen_at(self, epoch):
        return [g for g, start in enumerate(self.unfreeze_epoch[:-1])
                if start == epoch]

    def capture_targets(self, opt, epoch):
        """The rates once unfrozen, from the optimizer (`multipliers=None`)."""
        if epoch > 0:
            # The optimizer may be a loaded one, holding 0 (or a ramped
            # fraction) for the groups not fully unfrozen before `epoch`.
            unknown = [g for g in range(len(self.groups) - 1)
                       if self.fraction(g, epoch - 1) < 1.0]
            if unknown:
                raise ValueError(
                    f"{self.who} starts at epoch {epoch} (initial_epoch="
                    f"{epoch}) with `multipliers=None`, so it would read the "
                    "rates of the groups from the optimizer; but groups "
                    f"{unknown} were still frozen or ramping in epoch "
                    f"{epoch - 1}, so if this model was saved and loaded, the "
                    "optimizer holds 0 (or part of the rate) for them, not "
                    "their rates. Pass the rates explicitly, e.g. "
                    "`multipliers=difflr.discriminative(groups, ...)` or the "
                    "rule map you compiled with: with the same arguments, a "
                    "resumed run continues exactly."
                )
        self.targets = [opt.multiplier_for(v) for v in self.variables]

    def check_unfreezable(self, opt):
        """Fails now, not epochs later, if a group has no optimizer state."""
        for g, layers in enumerate(self.groups):
            pairs = [(v, m) for v, m, vg in zip(self.variables, self.targets, self.group_of)
                     if vg == g]
            try:
                opt.set_multipliers(pairs)
            except ValueError as e:
                names = ", ".join(layer.name for layer in layers)
                raise ValueError(
                    f"{self.who} cannot unfreeze group {g} ({names}): {e} "
                    f"{self.who} freezes the groups itself when training "
                    "begins, after the optimizer has given them state: compile "
                    "without multiplier 0 for the groups it will unfreeze, or "
                    "build the LRMultiplier with `keep_frozen_state=True`."
                ) from None
