"""The engine of gradual unfreezing: which group opens at which epoch, and
the multipliers of every epoch, set by multipliers inside one compiled `fit`.

`difflr.callbacks.GradualUnfreezing` is this callback under its public name;
`difflr.fine_tune` drives it under its own (`who`, the name its messages
give).
"""

import weakref

import keras

from difflr import _checks
from difflr import _keras_compat
from difflr import _rules
from difflr import _table
from difflr import grouping
from difflr.lr_multiplier import find_lr_multiplier


class Unfreezing(keras.callbacks.Callback):
    """`difflr.callbacks.GradualUnfreezing`, whose messages name `who`."""

    def __init__(self, groups, every, schedule, multipliers, ramp_epochs,
                 train_bn, verbose, who):
        super().__init__()
        self._who = who
        if every is not None and schedule is not None:
            raise ValueError(
                f"{who}: give `every` or `schedule`, not both; received "
                f"every={every!r}, schedule={schedule!r}."
            )
        if schedule is None:
            self.every = _checks.integer(1 if every is None else every,
                                         "every", who, minimum=1)
            self.schedule = None
        else:
            self.every = None
            self.schedule = _check_schedule(schedule, who)
        if groups is not None:
            grouping.check_groups(groups, who)  # the model is checked later
        self.groups = groups
        # Parsed now so that a bad rule map fails here, resolved at training.
        self._rules = None
        if multipliers is not None:
            try:
                self._rules = _rules.RuleMaps(multipliers)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{who}(multipliers=...): {e}") from None
        self.multipliers = multipliers
        self.ramp_epochs = _checks.integer(ramp_epochs, "ramp_epochs", who,
                                           minimum=0)
        if not isinstance(train_bn, bool):
            raise TypeError(f"{who}: `train_bn` must be True or False; "
                            f"received {train_bn!r}.")
        self.train_bn = train_bn
        self.verbose = verbose
        self._plan = None  # set when training begins
        self._first_epoch = True

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


def _check_schedule(schedule, who):
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, (list, tuple)):
        raise TypeError(
            f"{who}: `schedule` must be a list of epochs (integers), one per "
            f"group to unfreeze, top down; received {schedule!r}."
        )
    epochs = [_checks.integer(e, f"schedule[{i}]", who, minimum=0)
              for i, e in enumerate(schedule)]
    for i in range(1, len(epochs)):
        if epochs[i] < epochs[i - 1]:
            raise ValueError(
                f"{who}: `schedule` must not decrease (groups unfreeze from "
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
        per_group = _table.group_variables(model, callback.groups, who, complete=True)
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
                values = callback._rules.resolve(
                    list(model.trainable_variables), model).multipliers
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
