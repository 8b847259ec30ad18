"""The `LRMultiplier` optimizer: the public class, wiring the pieces.

Where each concern lives:

- rule maps, their ranking and resolution: `difflr/_rules.py`;
- which variables have optimizer state, and the multipliers in force (host
  and device): `difflr/_state.py`;
- freezing at build and pausing later: `difflr/_pause.py`;
- the per-step update, one module per backend path: `difflr/_update/`;
- the config and the saved resolution: `difflr/_saving.py`;
- every private Keras name: `difflr/_keras_compat.py`.
"""

import warnings
import weakref

import keras

from difflr import _declarations
from difflr import _keras_compat
from difflr import _pause
from difflr import _progress
from difflr import _rules
from difflr import _saving
from difflr import _scheduled
from difflr import _state
from difflr._update import Update


def _not_autographed(method):
    """Keeps TensorFlow's AutoGraph out of `method` and what it calls.

    Inside a `tf.function` (a custom training loop), AutoGraph rewrites the
    Python it meets into graph control flow, which difflr's build and rule
    code is not written for; Keras's own optimizer code is exempt the same
    way. That code runs as plain Python while the step is traced.
    """
    if keras.backend.backend() != "tensorflow":
        return method
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(method)


def _not_traced_by_dynamo(method):
    """Keeps torch.compile's Dynamo out of `method` and what it calls.

    An optimizer first applied inside a compiled step (a custom loop under
    `torch.compile`) is built there. difflr's build resolves the rules on the
    host (it searches the call stack for the model, makes NumPy vectors),
    where Dynamo would break the graph at each step of the way; run eagerly,
    the whole build is one break, at the first call only. Keras's own build
    breaks there too, at each variable it creates.
    """
    if keras.backend.backend() != "torch":
        return method
    import torch

    return torch.compiler.disable(method)


# Settings decided per variable when the optimizer is built.
_DECIDED_AT_BUILD = ("weight_decay", "adam_weight_decay")


def _check_settable(optimizer, name):
    if name in _DECIDED_AT_BUILD and optimizer.__dict__.get("built"):
        raise ValueError(
            f"LRMultiplier.{name} was set after the optimizer was built, when "
            "each variable's weight decay is already decided. Set it on the "
            "wrapped optimizer before `fit`, or change the decay per variable "
            "with `set_multipliers(decay_multipliers=...)`."
        )


def _delegated(name, own):
    """A property that reads and writes the wrapped optimizer's `name`. The
    base class's `__init__` and `build` see the wrapper's `own` value."""

    def get(self):
        inner = self.__dict__.get("inner_optimizer")
        if inner is None or self.__dict__.get("_own_settings"):
            return own
        return getattr(inner, name)

    def set(self, value):
        inner = self.__dict__.get("inner_optimizer")
        if inner is not None:  # (the base class sets it before there is one)
            _check_settable(self, name)
            setattr(inner, name, value)

    return property(get, set, doc=f"The wrapped optimizer's `{name}`.")


@keras.saving.register_keras_serializable(package="difflr")
class LRMultiplier(keras.optimizers.Optimizer):
    """Per-variable learning-rate multipliers for any Keras optimizer.

    Wraps a Keras optimizer so that every variable trains at its own multiple
    of one base learning rate, like Caffe's `lr_mult` and `decay_mult` or
    PyTorch's parameter groups. With multiplier `m` and decay multiplier `d`,
    a variable moves exactly as if it had its own copy of the wrapped
    optimizer built with `learning_rate * m` and `weight_decay * d`:

        lr_v = learning_rate(step) * m_v
        v <- v - lr_v * d_v * weight_decay * v        (if weight decay is on)
        v <- update_step(gradient_v, v, lr_v)         (the wrapped optimizer's)

    Everything global stays global: one `iterations` counter, the learning
    rate schedule evaluated once per step, `global_clipnorm` over all the
    gradients together, loss scaling, gradient accumulation and EMA exactly as
    the wrapped optimizer does them. The learning rate itself is scaled, never
    the gradient: Adam, RMSprop and their kin ignore the scale of a gradient.

    A multiplier of 0 freezes a variable. If it is 0 when the optimizer is
    built, the variable gets no optimizer state at all (its gradient is
    dropped as if it were not trainable), unless `keep_frozen_state=True`.
    A variable set to 0 later stops moving from the next step on, as a
    PyTorch parameter group with `lr=0` does, and its state goes on as at rate
    0 (Adam's moments keep tracking the gradients), except a velocity (SGD's
    and RMSprop's momentum, which holds the rate and would still move it):
    that is cleared as the pause begins. Where a rate of 0 is not well
    defined (Ftrl) or not checked (other optimizers), its state is held
    instead.

    Rule keys may be a `keras.Variable`, a layer or nested model (all its
    variables, however deep), a string (an exact `variable.path`, else a
    regular expression full-matched against the paths), a layer class, or a
    callable `variable -> float | None`. The most specific rule wins:
    variable > innermost layer > outer layer > exact path > regex > class >
    callable > the layer's own declaration (`difflr.layers`) > 1.0. Two rules
    of the same rank that disagree on a variable, and a rule that matches no
    trainable variable, are errors. Rules resolve when the optimizer is built.

    Args:
        optimizer (keras.optimizers.Optimizer | str): The optimizer to wrap: a
            `keras.optimizers.Optimizer` instance, or a name such as `"adam"`.
            The wrapper takes it over: do not use it on its own afterwards.
        multipliers (dict | list | None): Optional rule map (a dict, or a list
            of `(key, value)` pairs) from rules to learning-rate multipliers.
        decay_multipliers (dict | list | None): Optional rule map to
            weight-decay multipliers (Caffe's `decay_mult`). The effective
            decay of a variable is `weight_decay * m * d`, scaled by its
            learning rate as usual.
        keep_frozen_state (bool): If `True`, variables whose multiplier is 0
            when the optimizer is built still get optimizer state, so that
            `set_multipliers` can unfreeze them later inside the same compiled
            training. Defaults to `False` (frozen costs nothing).
        name (str | None): Optional name. Defaults to `"lr_multiplier"`.

    Example:

    >>> import keras, difflr
    >>> body = keras.Sequential([keras.layers.Dense(8, activation="relu")],
    ...                         name="body")
    >>> head = keras.layers.Dense(1, name="head")
    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, head(body(inputs)))
    >>> opt = difflr.LRMultiplier(keras.optimizers.Adam(1e-3),
    ...                           {body: 0.1, "head/bias": 2.0})
    >>> model.compile(optimizer=opt, loss="mse")
    >>> _ = model.fit(keras.ops.ones((8, 4)), keras.ops.zeros((8, 1)),
    ...               epochs=1, verbose=0)
    >>> opt.multiplier_for(body.layers[0].kernel)
    0.1
    >>> opt.multiplier_for(head.bias)
    2.0
    >>> opt.set_multipliers({body: 0.5})  # effective from the next step
    >>> opt.multiplier_for(body.layers[0].kernel)
    0.5
    """

    def __init__(
        self,
        optimizer,
        multipliers=None,
        decay_multipliers=None,
        keep_frozen_state=False,
        name=None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(
                f"LRMultiplier got unexpected arguments {sorted(kwargs)}. "
                "Clipping, EMA, loss scaling and gradient accumulation belong "
                "to the wrapped optimizer: set them there."
            )
        inner = _wrapped_optimizer(optimizer)
        super().__init__(learning_rate=0.0, name=name or "lr_multiplier")
        self.inner_optimizer = inner
        self.keep_frozen_state = bool(keep_frozen_state)
        self._rules = _rules.RuleMaps(multipliers, decay_multipliers)
        _warn_if_no_weight_decay(inner, decay_multipliers)
        # A `_saving.SavedResolution`: the values loaded with the optimizer
        # (`from_config`) or restored into its variables (`_adopt_restored`).
        # It ranks below the rules given since; `_superseded` holds the rules
        # given before, whose effect it holds (kept for `get_config`).
        self._saved = None
        self._superseded = _rules.RuleMaps()
        self._history = []  # `_Snapshot`s of the states put in force
        # The schedules of a loaded optimizer's table, in its order (the
        # saved schedule indices point into it).
        self._table_seed = []
        self._model_ref = None
        # Set by `build`: `_state.Layout`, `_state.Multipliers`,
        # `_pause.Pause`, and the backend's `_update.Update`.
        self._layout = self._multipliers = self._pause = self._update = None
        _declarations.expect(self)

    # Plain Python state, rewritten by every `set_multipliers`: Keras's
    # attribute tracking, and TensorFlow's under it, would wrap and walk it on
    # each assignment, so it is set around it.
    _UNTRACKED = frozenset({"_rules", "_saved", "_superseded", "_history",
                            "_table_seed",
                            "_model_ref", "_layout",
                            "_multipliers", "_pause", "_update"})

    def __setattr__(self, name, value):
        if name in self._UNTRACKED:
            object.__setattr__(self, name, value)
        elif self._is_inner_setting(name):
            _check_settable(self, name)
            setattr(self.inner_optimizer, name, value)
        else:
            super().__setattr__(name, value)

    def _is_inner_setting(self, name):
        """A public setting of the wrapped optimizer that the wrapper does not
        have itself (`beta_1`, `momentum`, ...): written there."""
        inner = self.__dict__.get("inner_optimizer")
        return (inner is not None and not name.startswith("_")
                and name not in self.__dict__ and not hasattr(type(self), name)
                and hasattr(inner, name))

    # The wrapped optimizer owns the base rate, the step counter and every
    # setting of the step (weight decay, clipping, EMA, accumulation, loss
    # scaling): read and written through the wrapper, they act on it.

    @property
    def learning_rate(self):
        """The base learning rate: each variable trains at a multiple of it."""
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner_optimizer.learning_rate = value

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    weight_decay = _delegated("weight_decay", None)
    clipnorm = _delegated("clipnorm", None)
    clipvalue = _delegated("clipvalue", None)
    global_clipnorm = _delegated("global_clipnorm", None)
    use_ema = _delegated("use_ema", False)
    ema_momentum = _delegated("ema_momentum", 0.99)
    ema_overwrite_frequency = _delegated("ema_overwrite_frequency", None)
    gradient_accumulation_steps = _delegated("gradient_accumulation_steps", None)
    # (`LossScaleOptimizer` sets None here to own loss scaling itself.)
    loss_scale_factor = _delegated("loss_scale_factor", None)

    def __getattr__(self, name):
        # Only when the wrapper has no such attribute: the wrapped
        # optimizer's own public settings (`beta_1`, `momentum`, ...).
        inner = self.__dict__.get("inner_optimizer")
        if inner is None or name.startswith("_"):
            raise AttributeError(
                f"'{type(self).__name__}' object has no attribute '{name}'")
        return getattr(inner, name)

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Excludes variables from the wrapped optimizer's weight decay.

        Acts on the wrapped optimizer, and accepts what it accepts: before
        the optimizer is built always; after, where the installed Keras
        does (3.15 and older take the call, with effect from the next
        traced step; 3.16 refuses it, and so does this).

        Args:
            var_list (list[keras.Variable] | None): Optional list of variables
                to exclude.
            var_names (list[str] | None): Optional list of strings: a variable
                whose name contains one of them is excluded.
        """
        try:
            self.inner_optimizer.exclude_from_weight_decay(
                var_list=var_list, var_names=var_names)
        except ValueError as e:
            if not self.built:
                raise
            raise ValueError(
                "LRMultiplier.exclude_from_weight_decay was called after the "
                f"optimizer was built, which Keras {keras.__version__} refuses "
                f"({e}). Call it before `fit` (or before "
                "`optimizer.build(...)`), or give those variables decay "
                "multiplier 0 with `set_multipliers(decay_multipliers=...)`."
            ) from None
        if self.built:
            self._layout.decide_weight_decay()
            self._multipliers.version += 1  # (derived caches: torch's plan)

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError(
            "LRMultiplier has no update step of its own: the wrapped "
            f"optimizer's ({type(self.inner_optimizer).__name__}) runs at each "
            "variable's rate inside `apply`. Call `optimizer.apply(grads, "
            "variables)`."
        )

    def add_variable(self, *args, **kwargs):
        """Adds a variable to the wrapped optimizer (see
        `keras.optimizers.Optimizer.add_variable`)."""
        return self.inner_optimizer.add_variable(*args, **kwargs)

    def add_variable_from_reference(self, *args, **kwargs):
        """As `add_variable`, shaped like a reference variable."""
        return self.inner_optimizer.add_variable_from_reference(*args, **kwargs)

    def add_optimizer_variables(self, *args, **kwargs):
        """As `add_variable`, one per trainable variable (Keras >= 3.12)."""
        return self.inner_optimizer.add_optimizer_variables(*args, **kwargs)

    @property
    def variables(self):
        if self._multipliers is None:  # (not built)
            return list(self.inner_optimizer.variables)
        # The progress, then the schedule indices, last: files saved
        # without them load as a prefix.
        vectors = self._multipliers.vectors
        return vectors[:2] + self.inner_optimizer.variables + (
            _progress.variables(self) + vectors[2:])

    @_not_autographed
    @_not_traced_by_dynamo
    def build(self, var_list):
        """Resolves the rules for `var_list` and builds the wrapped optimizer.

        Args:
            var_list (list[keras.Variable]): The model's trainable variables.
                `model.compile` and `model.fit` call this for you.
        """
        if self.built:
            return
        var_list = list(var_list)
        # Resolve first: a bad rule must leave the optimizer unbuilt.
        model = _keras_compat.find_model(var_list)
        resolution = self.resolve(var_list, model)
        lr, decay = resolution.multipliers, resolution.decay_multipliers
        tracked = _pause.tracked_positions(
            lr, self.keep_frozen_state, self._saved and self._saved.has_state)
        inner = self.inner_optimizer
        _keras_compat.check_weight_decay_is_standard(inner)
        # The base class builds the wrapper's own bookkeeping; the EMA and
        # gradient accumulators are the wrapped optimizer's, not its.
        object.__setattr__(self, "_own_settings", True)
        try:
            super().build(var_list)
        finally:
            object.__setattr__(self, "_own_settings", False)
        self._model_ref = None if model is None else weakref.ref(model)
        with keras.name_scope(self.name, caller=self):
            inner.build([var_list[i] for i in tracked])
            layout = _state.Layout(inner, var_list, tracked)
            # Keras may build inside a scope that defers variable creation,
            # where an `assign` right after `add_variable` would be lost: the
            # values go in through the initializer.
            table = _scheduled.Table(self._schedules_given(lr + decay))
            factors, indices = zip(table.split(lr), table.split(decay))
            self._lr_multipliers = self._vector("lr_multipliers", layout, factors[0])
            self._decay_multipliers = self._vector("decay_multipliers", layout, factors[1])
            # Gradual unfreezing's progress, saved and restored with the
            # optimizer (see `difflr/_progress.py`); the step never reads it.
            _progress.create(self, var_list)
            # Which schedule each variable follows, listed last: only with
            # schedules, so that an optimizer without costs nothing more.
            vectors = _state.Vectors(self._lr_multipliers, self._decay_multipliers)
            if len(table):
                vectors.lr_index = self._vector("lr_schedules", layout, indices[0], "int32")
                vectors.decay_index = self._vector(
                    "decay_schedules", layout, indices[1], "int32")
        self._layout = layout
        self._multipliers = _state.Multipliers(
            layout, lr, decay, vectors, table,
            on_restored=self._adopt_restored, sync=self._sync_training_state)
        self._pause = _pause.Pause(inner, layout)
        self._update = Update(inner, layout, self._multipliers, self._pause)
        self._remember()
        _declarations.claim(self, var_list)
        _keras_compat.install_update_hooks(
            inner, self._update.update_step, self._update.parallel_update_step)

    def _schedules_given(self, resolved):
        """The schedules the step will run: a loaded table's first, in its
        order, then those among `resolved` values and every rule given."""
        rules = self._superseded.merged_maps(self._rules)
        return (self._table_seed + list(resolved)
                + [r.value for r in rules.lr + rules.decay])

    def _vector(self, name, layout, values, dtype="float32"):
        vector = layout.tracked_vector(values, dtype)
        return super().add_variable(
            shape=vector.shape, dtype=dtype, name=name,
            initializer=lambda shape, dtype: keras.ops.cast(vector, dtype))

    def resolve(self, variables, model=None):
        """The rules resolved for `variables`, changing nothing.

        What `build` does to decide each variable's multipliers, and what
        `difflr.summary` shows (it previews an optimizer not built yet).

        Args:
            variables (list[keras.Variable]): The trainable variables (a
                model's `trainable_variables`, for an optimizer loaded with a
                model: the saved resolution is matched to them by position).
            model (keras.Model | None): Optional model owning them, which rules
                keyed by a layer class need.

        Returns:
            Resolution: A named tuple of four lists, one entry per variable:
            `multipliers`, `decay_multipliers`, and `sources` and
            `decay_sources`, the descriptions of the rules that decided them.

        Example:

        >>> import keras, difflr
        >>> inputs = keras.Input((2,))
        >>> model = keras.Model(inputs, keras.layers.Dense(1, name="head")(inputs))
        >>> opt = difflr.LRMultiplier("sgd", {"head/bias": 2.0})
        >>> resolution = opt.resolve(model.trainable_variables)
        >>> resolution.multipliers, resolution.sources
        ([1.0, 2.0], ['default', "rule 'head/bias'"])
        """
        return self._rules.resolve(list(variables), model, self._saved_tables(variables))

    def _saved_tables(self, variables):
        return None if self._saved is None else self._saved.tables(list(variables))

    # The step. The wrapped optimizer runs its own `apply`; only the
    # per-variable learning rate and weight decay go through the hooks of the
    # backend's `_update.Update`.

    @_not_autographed
    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "LRMultiplier.apply was called without variables before "
                    "the optimizer was built. Pass `trainable_variables`, or "
                    "call `optimizer.build(model.trainable_variables)` first."
                )
            trainable_variables = _keras_compat.built_variables(self)
        else:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
            _keras_compat.check_known(self, trainable_variables)
        grads = list(grads)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"LRMultiplier.apply received {len(grads)} gradients for "
                f"{len(trainable_variables)} variables."
            )
        self._update.before_apply()
        grads, trainable_variables = self._tracked(grads, trainable_variables)
        if grads:
            try:
                self.inner_optimizer.apply(grads, trainable_variables)
            finally:
                self._update.after_apply()

    def _tracked(self, grads, variables):
        """The pairs of the variables with optimizer state: those frozen at
        build are left out, as if they were not trainable."""
        layout = self._layout
        if len(layout.tracked) == len(layout.variables):
            return grads, variables
        pairs = [(g, v) for g, v in zip(grads, variables)
                 if layout.index_of(v) is not None]
        return [g for g, _ in pairs], [v for _, v in pairs]

    def finalize_variable_values(self, var_list):
        if not self.built:  # (TensorFlow's fit calls it after zero epochs)
            return
        self.inner_optimizer.finalize_variable_values(
            [v for v in var_list if self._layout.index_of(v) is not None])

    # Reading and changing multipliers.

    def multiplier_for(self, variable, step=None):
        """The learning-rate multiplier in force for `variable`.

        Args:
            variable (keras.Variable): One of the model's trainable variables.
            step (int | None): Optional step at which to read a multiplier that
                follows a schedule. Defaults to the current step (`iterations`,
                the step the next update runs at).

        Returns:
            float: The multiplier.
        """
        position = self._position(variable)
        return self._value_at(self._current().lr[position], step)

    def decay_multiplier_for(self, variable, step=None):
        """The weight-decay multiplier in force for `variable`.

        Args:
            variable (keras.Variable): One of the model's trainable variables.
            step (int | None): Optional step at which to read a decay
                multiplier that follows a schedule. Defaults to the current
                step.

        Returns:
            float: The decay multiplier.
        """
        position = self._position(variable)
        return self._value_at(self._current().decay[position], step)

    def schedule_for(self, variable):
        """The schedule `variable`'s learning-rate multiplier follows.

        Args:
            variable (keras.Variable): One of the model's trainable variables.

        Returns:
            keras.optimizers.schedules.LearningRateSchedule | None: The
            schedule, or None where the multiplier is a constant
            (`multiplier_for`).
        """
        value = self._current().lr[self._position(variable)]
        return value if _scheduled.is_schedule(value) else None

    def decay_schedule_for(self, variable):
        """The schedule `variable`'s weight-decay multiplier follows.

        Args:
            variable (keras.Variable): One of the model's trainable variables.

        Returns:
            keras.optimizers.schedules.LearningRateSchedule | None: The
            schedule, or None where the decay multiplier is a constant
            (`decay_multiplier_for`).
        """
        value = self._current().decay[self._position(variable)]
        return value if _scheduled.is_schedule(value) else None

    def weight_decay_for(self, variable, step=None):
        """The weight decay applied to `variable`, per unit of its rate.

        Each step `variable` decays by `learning_rate * m * weight_decay_for`
        (decoupled, as AdamW): the wrapped optimizer's `weight_decay` times
        the decay multiplier, or 0 where none is applied (the wrapped
        optimizer has no weight decay or excludes the variable with
        `exclude_from_weight_decay`, or the variable was frozen at build).

        Args:
            variable (keras.Variable): One of the model's trainable variables.
            step (int | None): Optional step at which to read a decay
                multiplier that follows a schedule. Defaults to the current
                step.

        Returns:
            float: The weight decay per unit of learning rate.
        """
        position = self._position(variable)
        index = self._layout.index_of(variable)
        weight_decay = None if index is None else self._layout.weight_decay[index]
        if weight_decay is None:
            return 0.0
        return float(weight_decay) * self._value_at(
            self._current().decay[position], step)

    def _value_at(self, value, step):
        """A value in force as a float: a schedule's at `step` (None: the
        current step)."""
        if not _scheduled.is_schedule(value):
            return value
        if step is None:
            step = keras.ops.convert_to_numpy(
                _keras_compat.schedule_step(self.inner_optimizer))
        return _scheduled.value_at(value, int(step))

    def _current(self):
        """The `_state.Multipliers`, up to date with the optimizer variables
        (which a restore may have written)."""
        self._multipliers.refresh()
        return self._multipliers

    def _position(self, variable):
        if not self.built:
            raise ValueError(
                "The optimizer is not built yet, so rules are not resolved. "
                "Compile and fit the model, or call "
                "`optimizer.build(model.trainable_variables)`."
            )
        position = _keras_compat.position_of(self, variable)
        if position is None:
            raise ValueError(
                f"{getattr(variable, 'path', variable)!r} is not one of the "
                "trainable variables this optimizer was built for."
            )
        return position

    def set_multipliers(self, multipliers=None, decay_multipliers=None):
        """Changes some rules; the new values apply from the next step.

        The given rules replace the rules with the same keys and join the
        others; all rules are then resolved again. Inside a compiled `fit`
        (`jit_compile=True`, `tf.function`, JAX) nothing is retraced and no
        optimizer state is reset, also when the optimizer was captured
        outside the model (on the JAX backend, the training state is synced
        first, as `self.model` in a callback does).

        Args:
            multipliers (dict | list | None): Optional rule map of
                learning-rate multipliers.
            decay_multipliers (dict | list | None): Optional rule map of decay
                multipliers.

        Raises:
            ValueError: if a variable that was frozen (multiplier 0) when the
                optimizer was built, and so has no optimizer state, would get
                a non-zero multiplier. Build with `keep_frozen_state=True` to
                unfreeze later.
        """
        _rules.RuleMaps(multipliers, decay_multipliers)  # bad rules fail first
        _warn_if_no_weight_decay(self.inner_optimizer, decay_multipliers)
        if self.built:
            # The training state first (on JAX, inside `fit`), then what it
            # holds: restored values become the ground the rules apply on.
            self._sync_training_state()
            self._multipliers.refresh()
        rules = self._rules.merged(multipliers, decay_multipliers)
        if self.built:
            layout = self._layout
            model = None if self._model_ref is None else self._model_ref()
            resolution = rules.resolve(layout.variables, model,
                                       self._saved_tables(layout.variables))
            _pause.check_unfreezable(layout, resolution.multipliers)
            before = self._multipliers.lr
            self._multipliers.write(resolution.multipliers, resolution.decay_multipliers)
            self._pause.clear_velocities(self._multipliers.lr, before)
        self._rules = rules
        if self.built:
            self._remember()

    def _sync_training_state(self):
        """On JAX, makes the variables hold the training state of every
        `fit` that may be training with this optimizer: the model it was
        built for, and the model whose `fit` (or `save`) is on the call
        stack, which differs when one optimizer serves two models. Writes to
        the variables then reach the running loop, and reads see its values.
        A no-op on other backends and outside `fit`."""
        if keras.backend.backend() != "jax":
            return
        models = [None if self._model_ref is None else self._model_ref(),
                  _keras_compat.find_compiled_model(self)]
        for model in {id(m): m for m in models if m is not None}.values():
            _keras_compat.sync_training_state(model)

    def _adopt_restored(self, before):
        """The variables were given values other than through
        `set_multipliers` (a checkpoint, `set_state_tree`, an `assign`):
        they are in force now. A state this optimizer was in before (a
        checkpoint of this run) comes back whole, with the rules that gave
        it, so that rules given later rank as they would have then.
        Otherwise the rules given so far are superseded by the values, as
        by a loaded file's resolution (rules given later apply on top). A
        velocity whose pause begins with them is cleared (seen here, on a
        read or a torch step: the compiled step does not look)."""
        multipliers, layout = self._multipliers, self._layout
        known = _Snapshot.find(self._history, multipliers)
        if known is not None:
            self._rules, self._saved, self._superseded = known.rules
            multipliers.take(known.lr, known.decay)
        else:
            self._saved = _saving.SavedResolution.of(
                layout.variables, multipliers.lr, multipliers.decay, layout.tracked)
            self._superseded = self._superseded.merged_maps(self._rules)
            self._rules = _rules.RuleMaps()
            self._remember()
        self._pause.clear_velocities(multipliers.lr, before)

    def _remember(self):
        """Records the state just put in force (see `_adopt_restored`)."""
        _Snapshot.add(self._history, _Snapshot(
            (self._rules, self._saved, self._superseded), self._multipliers))

    # Saving (see `difflr/_saving.py`).

    def load_own_variables(self, store):
        """Loads the optimizer's variables from a Keras checkpoint `store`.

        A file saved by an earlier difflr may lack state variables that
        this version adds at the end of `variables`: those keep their
        initial values, but the schedule indices, which say "no schedule"
        (such a file holds constant multipliers only).
        """
        variables = self.variables
        count = len(store.keys())
        extra = len(variables) - count
        if not self.built or extra < 0 or extra > len(self._trailing_variables()):
            return super().load_own_variables(store)
        for i, variable in enumerate(variables[:count]):
            variable.assign(store[str(i)])
        # A file without the schedule indices holds constants only: what
        # the factors say is in force, not the schedules of the rules now.
        for vector in self._multipliers.vectors[2:]:
            if any(vector is v for v in variables[count:]):
                vector.assign(keras.ops.full(vector.shape, -1, "int32"))
        self._restored()

    def _trailing_variables(self):
        """The variables listed after the wrapped optimizer's, which files
        saved by earlier versions of difflr do not hold."""
        variables, inner = self.variables, self.inner_optimizer.variables
        tail = 2 + len(inner)  # the two multiplier vectors come first
        return variables[tail:]

    def set_weights(self, weights):
        """Sets the optimizer's variables, in the order of `variables`.

        Args:
            weights (list[numpy.ndarray]): One array per variable of
                `variables`, in that order.
        """
        if not self.built:
            raise ValueError(
                "set_weights() was called on an LRMultiplier that is not built "
                "yet. Call `optimizer.build(model.trainable_variables)` first.")
        variables = self.variables
        if len(weights) != len(variables):
            raise ValueError(
                f"set_weights() received {len(weights)} arrays for the "
                f"{len(variables)} variables of LRMultiplier '{self.name}'.")
        for variable, weight in zip(variables, weights):
            if tuple(variable.shape) != tuple(weight.shape):
                raise ValueError(
                    f"set_weights(): the optimizer variable '{variable.path}' "
                    f"has shape {tuple(variable.shape)}, the array given for it "
                    f"{tuple(weight.shape)}.")
            variable.assign(weight)
        self._restored()

    def _restored(self):
        """Takes over the values restored into the vectors."""
        if self.built:
            self._multipliers.refresh()
            # (files saved by earlier versions may hold a paused velocity)
            self._pause.clear_velocities(self._multipliers.lr)

    def get_config(self):
        # The rules that can be saved as such, however long ago they were
        # given; once built, the values in force decide (loaded, they rank
        # above those rules, so the config round-trips).
        rules = self._superseded.merged_maps(self._rules)
        if self.built:
            layout, multipliers = self._layout, self._current()
            resolution = _saving.SavedResolution.of(
                layout.variables, multipliers.lr, multipliers.decay, layout.tracked)
            return _saving.config(self.name, self.inner_optimizer, rules,
                                  self.keep_frozen_state, resolution,
                                  schedules=multipliers.table.schedules)
        resolution = self._saved
        if resolution is None and rules.needs_resolution_to_save():
            # Not built yet (compiled, not fitted), with rules that can only
            # be saved resolved: resolve them for the model being saved.
            model = _keras_compat.find_compiled_model(self)
            if model is not None:
                variables = list(model.trainable_variables)
                try:
                    found = self.resolve(variables, model)
                except (TypeError, ValueError) as e:
                    # Raising here would leave the file `model.save` already
                    # truncated empty: save the model, and refuse the
                    # optimizer when it is loaded.
                    warnings.warn(
                        f"The LRMultiplier '{self.name}' is saved without its "
                        f"rules, which do not resolve for the model: {e} "
                        "Loading it will raise this error; the model and its "
                        "weights load with `compile=False`.", stacklevel=2)
                    return _saving.config(self.name, self.inner_optimizer, None,
                                          self.keep_frozen_state, unresolved=str(e))
                tracked = [i for i, m in enumerate(found.multipliers)
                           if m != 0 or self.keep_frozen_state]
                resolution = _saving.SavedResolution.of(
                    variables, found.multipliers, found.decay_multipliers, tracked)
        return _saving.config(self.name, self.inner_optimizer, rules,
                              self.keep_frozen_state, resolution,
                              schedules=self._table_seed)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        optimizer, arguments, resolution, schedules = _saving.from_config(
            config, custom_objects)
        loaded = cls(optimizer, **arguments)
        loaded._table_seed = schedules
        if resolution is not None:
            # The saved values are those the saved rules (and the rules that
            # could not be saved) gave: they rank above those rules, below
            # any given from now on.
            loaded._saved = resolution
            loaded._superseded, loaded._rules = loaded._rules, _rules.RuleMaps()
        return loaded


class _Snapshot:
    """A state an `LRMultiplier` was in: its rules (with the saved table and
    the rules it superseded) and the exact values they gave, keyed by the
    float32 values the device held."""

    LIMIT = 64  # the most recent distinct states (an epoch's change each)

    def __init__(self, rules, multipliers):
        self.rules = rules
        self.lr, self.decay = list(multipliers.lr), list(multipliers.decay)
        self.key = multipliers.device_key()

    @classmethod
    def add(cls, history, snapshot):
        history[:] = [s for s in history if s.key != snapshot.key][-(cls.LIMIT - 1):]
        history.append(snapshot)

    @staticmethod
    def find(history, multipliers):
        key = multipliers.device_key()
        return next((s for s in reversed(history) if s.key == key), None)


def _wrapped_optimizer(optimizer):
    if isinstance(optimizer, LRMultiplier):
        raise ValueError(
            "The optimizer is already an LRMultiplier; give all rules to one "
            "LRMultiplier instead of nesting them."
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "Wrap the plain optimizer, not a LossScaleOptimizer: under a "
            "mixed_float16 policy `model.compile` adds loss scaling around "
            "LRMultiplier itself, or write "
            "`keras.optimizers.LossScaleOptimizer(difflr.LRMultiplier(...))`."
        )
    multi = getattr(keras.optimizers, "MultiOptimizer", None)
    if multi is not None and isinstance(optimizer, multi):
        raise ValueError(
            "LRMultiplier cannot wrap a MultiOptimizer. Wrap one optimizer and "
            "give each group its multiplier instead."
        )
    if isinstance(optimizer, (str, dict)):
        optimizer = keras.optimizers.get(optimizer)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "LRMultiplier wraps a Keras optimizer: an instance of "
            "keras.optimizers.Optimizer or a name such as 'adam'. Received "
            f"{optimizer!r} of type {type(optimizer).__name__}."
        )
    if optimizer.built:
        raise ValueError(
            f"The optimizer '{optimizer.name}' is already built for some "
            "variables. Wrap a fresh optimizer: LRMultiplier builds it for "
            "the variables that are not frozen."
        )
    return optimizer


def _moving_averages(self):
    """The wrapped optimizer's EMA averages, aligned with the wrapper's own
    trainable variables, for `keras.callbacks.SwapEMAWeights` (which reads
    them on the optimizer inside a `LossScaleOptimizer`)."""
    averages = _keras_compat.moving_averages(self.inner_optimizer)
    if averages is None:
        raise AttributeError(_keras_compat.MOVING_AVERAGES)
    if len(self._layout.tracked) < len(self._layout.variables):
        raise ValueError(
            "The EMA weights of this LRMultiplier cannot be swapped in as a "
            "whole: variables frozen when it was built (multiplier 0) have no "
            "optimizer state, so no average. Build it with "
            "`keep_frozen_state=True`, or set `trainable=False` on the layers "
            "that stay frozen.")
    return averages


setattr(LRMultiplier, _keras_compat.MOVING_AVERAGES, property(_moving_averages))


def _warn_if_no_weight_decay(optimizer, decay_multipliers):
    """Decay multipliers scale the wrapped optimizer's weight decay: without
    one they change nothing, which is worth saying."""
    if decay_multipliers and not (optimizer.weight_decay
                                  or getattr(optimizer, "adam_weight_decay", None)):
        warnings.warn(
            "LRMultiplier got decay multipliers, but the wrapped optimizer "
            f"'{optimizer.name}' ({type(optimizer).__name__}) has no weight "
            "decay, so they change nothing. Give it one (e.g. "
            "`keras.optimizers.AdamW(weight_decay=0.01)`), or leave "
            "`decay_multipliers` out.",
            stacklevel=3,
        )


def find_lr_multiplier(optimizer, who):
    """The `LRMultiplier` that is `optimizer` or that it wraps.

    Under a `mixed_float16` policy `model.compile` wraps the optimizer in a
    `LossScaleOptimizer`; helpers that act on multipliers look through it.
    `who` names the caller in the error raised when there is none.
    """
    seen = optimizer
    while isinstance(seen, keras.optimizers.LossScaleOptimizer):
        seen = seen.inner_optimizer
    if not isinstance(seen, LRMultiplier):
        raise TypeError(
            f"{who} needs the model to be compiled with a difflr.LRMultiplier "
            f"optimizer; its optimizer is {type(optimizer).__name__}. Compile "
            "with `optimizer=difflr.LRMultiplier(<your optimizer>, ...)`."
        )
    return seen
