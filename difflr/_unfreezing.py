"""The engine of gradual unfreezing: which group opens at which epoch, and
the multipliers of every epoch, set by multipliers inside one compiled `fit`.

`difflr.callbacks.GradualUnfreezing` is this callback under its public name;
`difflr.fine_tune` drives it under its own (`who`, the name its messages
give).
"""

import weakref

import keras
import numpy as np

from difflr import _checks
from difflr import _keras_compat
from difflr import _progress
from difflr import _rules
from difflr import _scheduled
from difflr import _table
from difflr import grouping
from difflr.lr_multiplier import find_lr_multiplier


class Unfreezing(keras.callbacks.Callback):
    """`difflr.callbacks.GradualUnfreezing`, whose messages name `who`.

    Epoch-driven (`every`/`schedule`): the epoch at which each group opens
    is fixed by the arguments. Plateau-driven (`monitor`): it is decided at
    the end of each epoch from the monitored value, and kept in the
    callback's state (`opened_at`, the best value and epoch of the current
    phase, and with `restore_best_weights` a copy of the weights of that
    epoch).

    The progress (each variable's rate once unfrozen, the value last set,
    the epochs the groups opened, the plateau state but the weights) is also
    written into the optimizer's variables (`difflr._progress`) at every
    change, and read back when a fit begins: whatever restored the optimizer
    restored it too. `get_state`/`set_state` carry the same in memory (and
    the weights), and a state given by `set_state` wins over the optimizer's.
    """

    def __init__(self, groups, every, schedule, multipliers, ramp_epochs,
                 train_bn, verbose, who, monitor=None, patience=None,
                 min_delta=None, mode=None, restore_best_weights=None):
        super().__init__()
        self._who = who
        plateau_args = {"patience": patience, "min_delta": min_delta,
                        "mode": mode,
                        "restore_best_weights": restore_best_weights}
        if monitor is None:
            given = [k for k, v in plateau_args.items() if v is not None]
            if given:
                raise ValueError(
                    f"{who}: {', '.join(f'`{k}`' for k in given)} only "
                    "apply when the groups open on a plateau of a monitored "
                    "metric: pass `monitor=` too (e.g. monitor=\"val_loss\"), "
                    f"or leave them out; received "
                    + ", ".join(f"{k}={plateau_args[k]!r}" for k in given)
                    + "."
                )
        else:
            given = [f"{k}={v!r}" for k, v in (("every", every),
                                               ("schedule", schedule))
                     if v is not None]
            if given:
                raise ValueError(
                    f"{who}: give either `monitor` (the groups open when it "
                    "stops improving) or `every`/`schedule` (they open at "
                    f"fixed epochs), not both; received monitor={monitor!r} "
                    f"and {' and '.join(given)}."
                )
        self._init_plateau(monitor, patience, min_delta, mode,
                           restore_best_weights, who)
        if every is not None and schedule is not None:
            raise ValueError(
                f"{who}: give `every` or `schedule`, not both; received "
                f"every={every!r}, schedule={schedule!r}."
            )
        if self.monitor is not None:
            self.every = self.schedule = None
        elif schedule is None:
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
        self._given_state = False  # set_state was called since the last fit
        self._recorded = None  # the `_progress.Record` last written
        self._last_begun = None  # the last epoch begun (epoch-driven)

    def _init_plateau(self, monitor, patience, min_delta, mode,
                      restore_best_weights, who):
        self.monitor = monitor
        if monitor is None:
            self.patience = self.min_delta = self.mode = None
            self.restore_best_weights = False
            return
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(
                f"{who}: `monitor` must be the name of a logged quantity "
                f"(e.g. \"val_loss\"); received {monitor!r}."
            )
        self.patience = _checks.integer(0 if patience is None else patience,
                                        "patience", who, minimum=0)
        self.min_delta = _checks.number(0.0 if min_delta is None else min_delta,
                                        "min_delta", who, low=0.0)
        mode = "auto" if mode is None else mode
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                f"{who}: `mode` must be \"auto\", \"min\" or \"max\"; "
                f"received {mode!r}."
            )
        self.mode = mode
        restore = False if restore_best_weights is None else restore_best_weights
        if not isinstance(restore, bool):
            raise TypeError(f"{who}: `restore_best_weights` must be True or "
                            f"False; received {restore_best_weights!r}.")
        self.restore_best_weights = restore
        self._direction = None if mode == "auto" else mode  # "min" or "max"
        # The state: the epoch each group opened (bottom to head, the head's
        # entry the first epoch), the last epoch that ended, and the best
        # value of the current phase, its epoch and (restore_best_weights)
        # the weights at its end.
        self._opened = None
        self._last_epoch = None
        self._best = None
        self._best_epoch = None
        self._best_weights = None

    # The state of the plateau-driven mode.

    @property
    def opened_at(self):
        """The epoch at which each group began to train, bottom to head
        (`None` for a group that has not), or `None` before training."""
        if self.monitor is not None:
            return None if self._opened is None else list(self._opened)
        if self._plan is None or self._last_begun is None:
            return None
        return [u if u is not None and u <= self._last_begun else None
                for u in self._plan.unfreeze_epoch]

    def get_state(self):
        """The plateau-driven state, for `set_state` on a fresh callback."""
        self._need_monitor("get_state")
        weights = self._best_weights
        state = {
            "opened_at": self.opened_at,
            "last_epoch": self._last_epoch,
            "best": self._best,
            "best_epoch": self._best_epoch,
        }
        if self.restore_best_weights:
            state["best_weights"] = (None if weights is None
                                     else [w.copy() for w in weights])
        return state

    def set_state(self, state):
        """Continues from `get_state()` of the run being resumed."""
        who = self._who
        self._need_monitor("set_state")
        keys = {"opened_at", "last_epoch", "best", "best_epoch"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise TypeError(
                f"{who}.set_state: expected the dict `get_state()` returns, "
                f"with keys {sorted(keys)}; received {state!r:.200}."
            )
        opened = state["opened_at"]
        if opened is None:  # saved before training began: nothing to resume
            self._opened = self._last_epoch = None
            self._best = self._best_epoch = self._best_weights = None
            self._given_state = True
            return self
        if isinstance(opened, (str, bytes)) or not isinstance(opened, (list, tuple)):
            raise TypeError(f"{who}.set_state: `opened_at` must be a list of "
                            f"epochs (or None); received {opened!r}.")
        opened = [None if u is None else
                  _checks.integer(u, f"opened_at[{i}]", who, minimum=0)
                  for i, u in enumerate(opened)]
        last = _checks.integer(state["last_epoch"], "last_epoch", who,
                               minimum=0) if state["last_epoch"] is not None else None
        best_epoch = state["best_epoch"]
        if best_epoch is not None:
            best_epoch = _checks.integer(best_epoch, "best_epoch", who, minimum=0)
        weights = state.get("best_weights")
        if (self.restore_best_weights and best_epoch is not None
                and best_epoch != last and weights is None):
            raise ValueError(
                f"{who}.set_state: `restore_best_weights=True` and the best "
                f"epoch of the current phase ({best_epoch}) is not the last "
                f"one ({last}), so the state must hold its weights "
                "(`best_weights`), as `get_state()` of a callback with "
                "`restore_best_weights=True` returns them."
            )
        self._opened = opened
        self._last_epoch = last
        self._best = None if state["best"] is None else float(state["best"])
        self._best_epoch = best_epoch
        self._best_weights = (None if weights is None
                              else [np.array(w, copy=True) for w in weights])
        self._given_state = True
        if self._plan is not None:
            self._attach(self._plan)
        return self

    def _need_monitor(self, what):
        if self.monitor is None:
            raise ValueError(
                f"{self._who}.{what}: only the plateau-driven mode "
                "(`monitor=`) has a state to carry; with `every`/`schedule` "
                "the multipliers are a function of the epoch: resume with "
                "`fit(initial_epoch=...)` and the same arguments."
            )

    def _attach(self, plan):
        """Makes the plan open the groups when the state says."""
        n = len(plan.groups)
        if self._opened is not None and len(self._opened) != n:
            raise ValueError(
                f"{self._who}: the state gives `opened_at` for "
                f"{len(self._opened)} groups, but the model has {n} groups; "
                "resume with the groups the state was recorded with."
            )
        if self._opened is not None:
            plan.unfreeze_epoch = self._opened  # the same list, updated in place

    # Keras calls these.

    def on_train_begin(self, logs=None):
        model = self.model  # on JAX this syncs the training state
        find_lr_multiplier(model.optimizer, self._who)  # fail now, not in an epoch
        plan = self._plan
        if plan is None or plan.model() is not model:
            self._plan = _Plan(model, self, self._who)
            if self.monitor is not None:
                self._attach(self._plan)
        built_optimizer(model, self._who)
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._plan is None:
            self.on_train_begin()
        plan = self._plan
        opt = find_lr_multiplier(self.model.optimizer, self._who)
        if self._first_epoch:
            self._first_epoch = False
            record = _progress.of(opt).read(self.model)
            plan.locate(opt)
            if self.monitor is not None:
                self._plateau_fit_begin(epoch, plan, record)
            plan.take_targets(opt, epoch, record)
            plan.check_unfreezable(opt)
        if self.monitor is not None:
            self._plateau_epoch_begin(epoch, plan)
        values = plan.values_at(epoch)
        opt.set_multipliers(list(zip(plan.variables, values)))
        self._last_begun = epoch
        self._record(opt, values)
        if self.verbose:
            for j in plan.unfrozen_at(epoch):
                names = ", ".join(layer.name for layer in plan.groups[j])
                # Numbered from 1 as Keras's progress bar and callbacks
                # print epochs; the entry it sets counts from 0, as `fit`.
                print(f"\nEpoch {epoch + 1}: {self._who} unfreezes group {j} "
                      f"({names}); opened_at[{j}] = {epoch}.")

    def _record(self, opt, values=None):
        """Writes the progress into the optimizer's variables (`values`: the
        multipliers just set; else those of the last record)."""
        plan = self._plan
        positions = plan.positions
        if values is None:
            last_set = self._recorded.last_set
        else:
            last_set = {i: np.float32(m) for i, m in zip(positions, values)}
        opened = self.opened_at
        mode = _progress.EPOCH_DRIVEN if self.monitor is None else _progress.PLATEAU
        self._recorded = _progress.Record(
            mode=mode,
            rates=dict(zip(positions, plan.targets)),
            last_set=last_set,
            opened={i: opened[g] for i, g in zip(positions, plan.group_of)},
            last_begun=self._last_begun,
            last_epoch=self._last_epoch if self.monitor is not None else None,
            best=self._best if self.monitor is not None else None,
            best_epoch=self._best_epoch if self.monitor is not None else None)
        _progress.of(opt).write(self.model, self._recorded)

    def _plateau_fit_begin(self, epoch, plan, record):
        """The plateau state a fit starts from: the one `set_state` gave,
        else the optimizer's (a restored checkpoint's), else a fresh run's."""
        if self._given_state:
            self._given_state = False
        elif record is not None and record.mode == _progress.PLATEAU \
                and record.last_epoch is not None and (
                    epoch != 0 or self._opened is not None):
            self._adopt(record, plan)
        else:  # a fresh run: the head's phase begins
            self._opened = None
            self._last_epoch = self._best = self._best_epoch = None
            self._best_weights = None
        if self._opened is None:
            self._opened = [None] * (len(plan.groups) - 1) + [epoch]
            self._attach(plan)
        elif self._last_epoch is not None and epoch != self._last_epoch + 1:
            raise ValueError(self._misplaced_resume(epoch))

    def _misplaced_resume(self, epoch):
        last = self._last_epoch
        hint = ""
        if epoch == last + 2:
            hint = (" If a checkpoint callback (`BackupAndRestore`, "
                    "`ModelCheckpoint`) saved it, it ran before "
                    f"{self._who} at the end of epoch {last + 1} and saved that "
                    f"epoch's weights without {self._who}'s decision: list "
                    f"{self._who} before it in `callbacks`.")
        return (
            f"{self._who} (monitor={self.monitor!r}) continues from a state "
            f"whose last epoch is {last}, so it must resume at epoch "
            f"{last + 1}; this fit begins at epoch {epoch}. Pass "
            f"`initial_epoch={last + 1}`, or use a new callback and fit from "
            f"epoch 0 to start over.{hint}")

    def _adopt(self, record, plan):
        """Continues the plateau-driven run that `record` was written by."""
        opened = []
        for g in range(len(plan.groups)):
            epochs = {record.opened.get(i, "missing") for i, vg
                      in zip(plan.positions, plan.group_of) if vg == g}
            if len(epochs) != 1 or "missing" in epochs:
                raise ValueError(
                    f"{self._who}: the optimizer holds the progress of a "
                    "plateau-driven unfreezing recorded with other groups "
                    f"than this callback's {len(plan.groups)} (group {g} "
                    "does not match); resume with the groups it was recorded "
                    "with, or compile a new optimizer to start over.")
            opened.append(epochs.pop())
        weights = self._weights_for(record)
        self._opened, self._last_epoch = opened, record.last_epoch
        self._best, self._best_epoch = record.best, record.best_epoch
        self._best_weights = weights
        self._attach(plan)

    def _weights_for(self, record):
        """The best weights of the phase `record` is in, for
        `restore_best_weights`: the model's when its best epoch is the last
        one, those this callback keeps when it recorded that epoch; the
        optimizer cannot hold them."""
        if not self.restore_best_weights or record.best_epoch is None:
            return None
        if record.best_epoch == record.last_epoch:
            return [np.array(w, copy=True) for w in self.model.get_weights()]
        if self._best_weights is not None and self._best_epoch == record.best_epoch:
            return self._best_weights
        raise ValueError(
            f"{self._who} (restore_best_weights=True) resumes a phase whose "
            f"best epoch ({record.best_epoch}) is not its last ({record.last_epoch}), "
            "so the weights of that epoch are needed when the next group "
            "opens; the checkpoint holds the progress, but not a copy of "
            "those weights (they were in the interrupted callback's memory). "
            "Keep `state = callback.get_state()` (it holds them) with the "
            "checkpoint and resume with `callback.set_state(state)`, or "
            "resume with `restore_best_weights=False`.")

    def _plateau_epoch_begin(self, epoch, plan):
        phase_start = max(u for u in self._opened if u is not None)
        if self._best_epoch is not None and self._best_epoch < phase_start:
            # A group opens now: the phase that ended gives way to a new one.
            if self.restore_best_weights and self._best_weights is not None:
                self.model.set_weights(self._best_weights)
                if self.verbose:
                    print(f"\nEpoch {epoch + 1}: {self._who} restores the "
                          f"weights of epoch {self._best_epoch + 1}, the best "
                          f"of the phase that ended ({self.monitor} = "
                          f"{self._best:.6g}).")
            self._best = self._best_epoch = self._best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is None or self._opened is None:
            return
        logs = {} if logs is None else logs
        if self.monitor not in logs:
            hint = ""
            if self.monitor.startswith("val_") and not any(
                    k.startswith("val_") for k in logs):
                hint = (" There are no validation metrics in this epoch: "
                        "pass `validation_data=` (or `validation_split=`) to "
                        "`fit`, and validate every epoch (validation_freq=1).")
            raise ValueError(
                f"{self._who}: `monitor={self.monitor!r}` is not in the logs "
                f"of epoch {epoch}; the keys available are "
                f"{sorted(logs)}.{hint}"
            )
        try:
            current = float(_checks.scalar(logs[self.monitor]))
        except (TypeError, ValueError):
            raise TypeError(
                f"{self._who}: the logged `{self.monitor}` must be a number; "
                f"received {logs[self.monitor]!r}."
            ) from None
        logs["unfrozen_groups"] = sum(
            1 for u in self._opened[:-1] if u is not None and u <= epoch)
        self._decide(epoch, current)
        # Before a checkpoint callback listed after this one saves the epoch.
        self._record(find_lr_multiplier(self.model.optimizer, self._who))

    def _decide(self, epoch, current):
        """Follows the phase's best value; opens a group on a plateau."""
        opened = self._opened
        self._last_epoch = epoch
        frozen = [j for j, u in enumerate(opened[:-1]) if u is None]
        if not frozen:
            return  # every group trains: nothing left to decide
        if self._direction is None:
            self._direction = _direction(self.model, self.monitor, self._who)
        if self._best is None or _improves(current, self._best,
                                           self.min_delta, self._direction):
            self._best, self._best_epoch = current, epoch
            if self.restore_best_weights:
                self._best_weights = [np.array(w, copy=True)
                                      for w in self.model.get_weights()]
        elif epoch - self._best_epoch >= max(self.patience, 1):
            opened[frozen[-1]] = epoch + 1  # the next group, top down


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


def _improves(current, best, min_delta, direction):
    """Whether `current` improves on `best` by more than `min_delta`
    (Keras's `EarlyStopping`: a change of `min_delta` or less is none)."""
    if direction == "min":
        return current + min_delta < best
    return current - min_delta > best


def _direction(model, monitor, who):
    """"min" or "max" for `mode="auto"`, inferred as Keras's `EarlyStopping`
    infers it: a loss is minimized; a compiled metric of that name (with or
    without "val_") goes the way it declares; anything else is an error."""
    name = monitor[len("val_"):] if monitor.startswith("val_") else monitor
    if name == "loss":
        return "min"
    direction = None
    for metric in getattr(model, "metrics", None) or []:
        inner = getattr(metric, "metrics", None)  # compiled metrics' container
        for m in inner if isinstance(inner, (list, tuple)) else [metric]:
            if getattr(m, "name", None) == name and hasattr(m, "_direction"):
                direction = "max" if m._direction == "up" else "min"
    if direction is None:
        raise ValueError(
            f"{who}: `mode=\"auto\"` cannot tell whether `{monitor}` should "
            "go down or up (it is not a loss, nor a compiled metric that "
            "declares its direction). Pass `mode=\"min\"` or `mode=\"max\"`."
        )
    return direction


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
        if callback.monitor is not None:
            top_down = [None] * (n - 1)  # opened on plateaus, in the state
        elif callback.schedule is not None:
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
        self.targets = self.given_targets = None
        self.positions = None  # among the optimizer's variables, per variable
        if callback._rules is not None:
            try:
                values = callback._rules.resolve(
                    list(model.trainable_variables), model).multipliers
            except (TypeError, ValueError) as e:
                raise type(e)(f"{who}(multipliers=...): {e}") from None
            by_id = {id(v): m for v, m in zip(model.trainable_variables, values)}
            self.given_targets = [by_id[id(v)] for v in self.variables]

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

    def locate(self, opt):
        """Finds the variables' positions in the built optimizer `opt`."""
        self.positions = [_keras_compat.position_of(opt, v) for v in self.variables]

    def take_targets(self, opt, epoch, record):
        """The rates once unfrozen, when a fit begins: those of `multipliers`
        if given; else, for each variable, the rate `record` (the
        optimizer's progress) holds where its multiplier is still the value
        the recorded run left (a frozen group's 0, a ramp's fraction), and
        its multiplier otherwise (the compiled one, or one set since)."""
        self._refuse_schedules(opt)
        if self.given_targets is not None:
            self.targets = list(self.given_targets)
            return
        targets, unknown = [], set()
        for v, i, g in zip(self.variables, self.positions, self.group_of):
            now = opt.multiplier_for(v)
            if record is not None and i in record.rates and (
                    np.float32(now) == record.last_set[i]):
                targets.append(record.rates[i])
                continue
            targets.append(now)
            if 0 < epoch and g < len(self.groups) - 1 and self.fraction(g, epoch - 1) < 1:
                unknown.add(g)
        if unknown:
            raise ValueError(
                f"{self.who} starts at epoch {epoch} (initial_epoch="
                f"{epoch}) with `multipliers=None`, so it reads the rates of "
                "the groups from the optimizer; but groups "
                f"{sorted(unknown)} were still frozen or ramping in epoch "
                f"{epoch - 1}, and the optimizer holds no progress of a "
                "gradual unfreezing for them (it was saved by an earlier "
                "version of difflr, or their multipliers were changed since), "
                "so what it holds is 0 (or part of the rate), not their rates. "
                "Pass the rates explicitly, e.g. "
                "`multipliers=difflr.discriminative(groups, ...)` or the "
                "rule map you compiled with: with the same arguments, a "
                "resumed run continues exactly."
            )
        self.targets = targets

    def _refuse_schedules(self, opt):
        """The rates are numbers the ramp scales and the progress records:
        a multiplier that follows a schedule would be frozen at its value
        now, in silence."""
        given = self.given_targets or [None] * len(self.variables)
        for v, m in zip(self.variables, given):
            schedule = (m if _scheduled.is_schedule(m)
                        else opt.schedule_for(v) if m is None else None)
            if schedule is not None:
                raise ValueError(
                    f"{self.who}: the learning-rate multiplier of '{v.path}' "
                    f"follows a schedule ({_scheduled.describe(schedule)}); "
                    f"{self.who} sets numbers (0, a ramp's fraction of the "
                    "rate) and cannot unfreeze to a schedule. Give the groups "
                    "constant multipliers (`multipliers=`, or compile with "
                    "numbers), or unfreeze with the schedules themselves "
                    "(`difflr.schedules.Ramp`, docs/freezing.md).")

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
