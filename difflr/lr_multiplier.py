import contextlib
import math
import weakref

import keras
import numpy as np
from keras import ops

from difflr import _keras_compat
from difflr import _rules

_LR = "learning-rate multiplier"
_DECAY = "decay multiplier"
# Where `difflr.layers` store a layer's own declaration on its variables.
DECLARED_LR_ATTR = "_difflr_lr_multiplier"
DECLARED_DECAY_ATTR = "_difflr_decay_multiplier"
CLAIMED_ATTR = "_difflr_claimed"
# LRMultipliers not built yet. TensorFlow traces the forward pass of the
# first step before the optimizer builds (and claims its variables) in the
# same trace, so a declaring layer must not conclude "no LRMultiplier" then.
_UNBUILT = weakref.WeakSet()


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
        optimizer: The optimizer to wrap: a `keras.optimizers.Optimizer`
            instance, or a name such as `"adam"`. The wrapper takes it over:
            do not use it on its own afterwards.
        multipliers: Optional rule map (a dict, or a list of `(key, value)`
            pairs) from rules to learning-rate multipliers.
        decay_multipliers: Optional rule map to weight-decay multipliers
            (Caffe's `decay_mult`). The effective decay of a variable is
            `weight_decay * m * d`, scaled by its learning rate as usual.
        keep_frozen_state: If `True`, variables whose multiplier is 0 when
            the optimizer is built still get optimizer state, so that
            `set_multipliers` can unfreeze them later inside the same
            compiled training. Defaults to `False` (frozen costs nothing).
        name: Optional name. Defaults to `"lr_multiplier"`.

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
        saved = kwargs.pop("saved_resolution", None)
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
        self._lr_rules = _rules.parse(multipliers, _LR)
        self._decay_rules = _rules.parse(decay_multipliers, _DECAY)
        self._saved = saved
        self._version = 0
        self._host_cache = None
        self._group_cache = None
        self._pause = None
        self._step = None
        self._model_ref = None
        _UNBUILT.add(self)

    # Host-side bookkeeping, rewritten by every `set_multipliers` (and the
    # per-step caches): plain Python, no variables. Keras's attribute
    # tracking, and TensorFlow's under it, would wrap and walk these lists on
    # each assignment (three quarters of a `set_multipliers` call on
    # TensorFlow), so they are set around it.
    _UNTRACKED = frozenset({
        "_lr_rules", "_decay_rules", "_lr_values", "_decay_values",
        "_host_cache", "_group_cache", "_step", "_pause",
    })

    def __setattr__(self, name, value):
        if name in self._UNTRACKED:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # The wrapped optimizer owns the base rate and the step counter.

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

    @property
    def loss_scale_factor(self):
        inner = self.__dict__.get("inner_optimizer")
        return None if inner is None else inner.loss_scale_factor

    @loss_scale_factor.setter
    def loss_scale_factor(self, value):
        # `BaseOptimizer.__init__` sets None before the inner optimizer exists;
        # `LossScaleOptimizer` sets None to own loss scaling itself.
        inner = self.__dict__.get("inner_optimizer")
        if inner is not None:
            inner.loss_scale_factor = value

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    @property
    def variables(self):
        own = [self._lr_multipliers, self._decay_multipliers] if self.built else []
        return own + self.inner_optimizer.variables

    def build(self, var_list):
        """Resolves the rules for `var_list` and builds the wrapped optimizer.

        Args:
            var_list: The model's trainable variables. `model.compile` and
                `model.fit` call this for you.
        """
        if self.built:
            return
        var_list = list(var_list)
        # Resolve first: a bad rule must leave the optimizer unbuilt.
        model = _keras_compat.find_model(var_list)
        lr_values, decay_values = self._resolve(var_list, model)

        # A loaded optimizer gives state to the variables that had it when
        # saved, including those paused since: their saved state must load.
        had_state = (self._saved or {}).get("has_state") or [False] * len(lr_values)
        self._active_positions = [
            i for i, m in enumerate(lr_values)
            if m != 0 or self.keep_frozen_state or had_state[i]
        ]
        if not self._active_positions:
            raise ValueError(
                "Every trainable variable has learning-rate multiplier 0, so "
                "there is nothing to train. Set `trainable=False` on frozen "
                "layers, or pass `keep_frozen_state=True` to unfreeze later."
            )
        active = [var_list[i] for i in self._active_positions]
        inner = self.inner_optimizer
        _keras_compat.check_weight_decay_is_standard(inner)
        super().build(var_list)
        self._model_ref = None if model is None else weakref.ref(model)
        self._lr_values, self._decay_values = lr_values, decay_values
        n = len(active)
        with keras.name_scope(self.name, caller=self):
            inner.build(active)
            # Keras may build inside a scope that defers variable creation,
            # where an `assign` right after `add_variable` would be lost: the
            # values go in through the initializer.
            self._lr_multipliers = self.add_variable(
                shape=(n,), initializer=self._initializer(lr_values),
                dtype="float32", name="lr_multipliers")
            self._decay_multipliers = self.add_variable(
                shape=(n,), initializer=self._initializer(decay_values),
                dtype="float32", name="decay_multipliers")

        self._slots = _keras_compat.per_variable_slots(inner, active)
        # Per-step state outside the slots (Nadam's `u_product`): advanced
        # once per step, not once per group of equal multipliers.
        self._global_state = _keras_compat.per_step_state(inner, self._slots)
        self._active_index = {
            _keras_compat.var_key(inner, v): j for j, v in enumerate(active)
        }
        self._weight_decay = [
            _keras_compat.weight_decay_for(inner, v) for v in active
        ]
        backend = keras.backend.backend()
        self._is_torch = backend == "torch"
        # Keras's own optimizers write only through `assign*`: a paused
        # variable's writes are guarded there. Anything else is restored.
        self._guarded = (not self._is_torch
                         and _keras_compat.writes_through_assign(inner))
        # The writes held while a variable is paused (see `pause_form`), and
        # the velocities cleared when a pause begins.
        self._pause_form = _keras_compat.pause_form(inner)
        self._pause_keys = [
            frozenset(_keras_compat.var_key(inner, t) for t in [v] + slots)
            if self._pause_form == "hold" else frozenset()
            for v, slots in zip(active, self._slots)
        ]
        self._velocities = _keras_compat.velocity_slots(inner, active)
        form = _keras_compat.rate_form(inner)
        # TensorFlow runs op by op (no XLA on CPU by default), where lr * m
        # is the fewest ops; XLA (JAX) fuses the step form into the update.
        self._step_form = backend == "jax" and form == "step"
        full = all(v.dtype in _FULL_PRECISION for v in active)
        self._torch_step_form = self._is_torch and full and form == "step"
        if self._guarded:
            _keras_compat.install_write_guard(inner, self._guard_write)
        for v in var_list:
            setattr(v, CLAIMED_ATTR, True)
        _UNBUILT.discard(self)
        _keras_compat.install_update_hooks(
            inner, self._hooked_update_step, self._hooked_parallel_update_step
        )

    def _resolve(self, var_list, model):
        lr, _, decay, _ = self._resolution(var_list, model)
        return lr, decay

    def _resolution(self, var_list, model):
        """The rules resolved for `var_list`, changing nothing.

        Returns `(lr_values, lr_sources, decay_values, decay_sources)`: a
        value per variable and the description of the rule that decided it.
        `build` and `set_multipliers` use the values; `difflr.summary` shows
        the sources, and previews an optimizer that is not built yet.
        """
        saved_lr = saved_decay = None
        if self._saved is not None:
            saved_lr, saved_decay = _check_saved(self._saved, var_list)
        lr, lr_sources = _rules.resolve(var_list, self._lr_rules, _LR, model,
                                        saved_lr, DECLARED_LR_ATTR)
        decay, decay_sources = _rules.resolve(
            var_list, self._decay_rules, _DECAY, model, saved_decay,
            DECLARED_DECAY_ATTR)
        return lr, lr_sources, decay, decay_sources

    def _active_vector(self, values):
        """`values` of the variables that have optimizer state, as float32."""
        return np.array([values[i] for i in self._active_positions], "float32")

    def _initializer(self, values):
        vector = self._active_vector(values)
        return lambda shape, dtype: ops.cast(vector, dtype)

    def _write_vectors(self):
        self._lr_multipliers.assign(self._active_vector(self._lr_values))
        self._decay_multipliers.assign(self._active_vector(self._decay_values))
        self._version += 1

    # The step. The wrapped optimizer runs its own `apply`; only the
    # per-variable learning rate and weight decay go through these hooks.

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "LRMultiplier.apply was called without variables before "
                    "the optimizer was built. Pass `trainable_variables`, or "
                    "call `optimizer.build(model.trainable_variables)` first."
                )
            trainable_variables = self._trainable_variables
        else:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
            self._check_variables_are_known(trainable_variables)
        grads = list(grads)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"LRMultiplier.apply received {len(grads)} gradients for "
                f"{len(trainable_variables)} variables."
            )
        if self._is_torch:
            _refuse_unsynchronised_torch_fit()
        inner = self.inner_optimizer
        if len(self._active_index) < len(self._trainable_variables):
            # Variables frozen at build have no state: leave them out.
            pairs = [
                (g, v) for g, v in zip(grads, trainable_variables)
                if _keras_compat.var_key(inner, v) in self._active_index
            ]
            grads = [g for g, _ in pairs]
            trainable_variables = [v for _, v in pairs]
        if grads:
            self._step = None
            try:
                inner.apply(grads, trainable_variables)
            finally:
                self._step = None  # tensors of this trace only

    def _compiled_step(self, learning_rate):
        """This compiled step's per-variable tensors (TensorFlow, JAX): a
        `_CompiledStep`, computed at the first variable's update and shared
        by the others."""
        step = self._step
        if step is None or step.learning_rate is not learning_rate:
            step = self._step = _CompiledStep(self, learning_rate)
        return step

    def _host_multipliers(self):
        if self._host_cache is None or self._host_cache[0] != self._version:
            lr = ops.convert_to_numpy(self._lr_multipliers).tolist()
            decay = ops.convert_to_numpy(self._decay_multipliers).tolist()
            self._host_cache = (self._version, lr, decay)
        return self._host_cache[1], self._host_cache[2]

    def _hooked_update_step(self, update_step, gradient, variable, learning_rate):
        inner = self.inner_optimizer
        index = self._active_index.get(_keras_compat.var_key(inner, variable))
        if index is None:
            return update_step(gradient, variable, learning_rate)
        if self._is_torch:
            # Eager, with host floats, re-read only when the multipliers
            # change. A paused variable (m = 0) does not move; its state
            # moves as at rate 0, or is held (`pause_form`).
            lr, decay = self._host_multipliers()
            m = lr[index]
            if m != 0 or self._pause_form == "rate":
                self._decay_and_update(update_step, gradient, variable,
                                       learning_rate, index, m, decay[index])
            return
        # Inside a compiled step m is a tensor, and m = 0 must pause the
        # variable. At rate 0 Keras's SGD, Adam and their kin leave it exactly
        # where it is; for the others (`pause_form`), the writes to the
        # variable and its slots (rate 0 is not well defined for Ftrl, which
        # divides by it) keep their old values wherever m is 0
        # (`_guard_write`).
        tensors = self._compiled_step(learning_rate)
        m = None if tensors.multipliers is None else tensors.multipliers[index]
        paused = None if tensors.paused is None else tensors.paused[index]
        d = None  # read by `_rates` from the step's tensors
        if not self._guarded:
            return self._update_and_restore(update_step, gradient, variable,
                                            learning_rate, index, m, d, paused)
        step = self._step_form and variable.dtype in _FULL_PRECISION
        keys = self._pause_keys[index]
        with self._pausing(paused, keys) if keys else contextlib.nullcontext():
            self._decay_and_update(update_step, gradient, variable, learning_rate,
                                   index, m, d, step)

    def _decay_and_update(self, update_step, gradient, variable, learning_rate,
                          index, m, d, step=False):
        """Weight decay at rate lr * m * d, then the wrapped update at lr * m.

        With `step`, in the step form: Adam and its kin move v by lr * s, with
        s and their state free of lr and of v. The update runs at the base
        rate in a zeroed v, which leaves -lr * s in it, and v becomes
        v_decayed + m * (-lr * s) (exactly v where m is 0). Their scalar math
        (Adam's bias correction times the rate) is then one computation shared
        by all variables, not one per variable: on XLA, one kernel less per
        variable.
        """
        inner = self.inner_optimizer
        lr, decay = self._rates(index, learning_rate, m, d)
        if decay is not None:
            decay = ops.cast(decay, variable.dtype)
        if not step:
            if decay is not None:  # decoupled, at the variable's own rate
                inner.assign_sub(variable, variable * decay)
            update_step(gradient, variable, lr)
            return
        old = _read(variable)
        inner.assign(variable, ops.zeros_like(old))
        update_step(gradient, variable, learning_rate)
        new = old if decay is None else old - old * decay
        new = new + ops.cast(m, variable.dtype) * _read(variable)
        inner.assign(variable, new)

    def _rates(self, index, learning_rate, m, d):
        """The variable's rate `lr * m` and its decay coefficient
        `lr * m * d * weight_decay` (None without weight decay).

        Host floats on torch; inside a compiled step, the variable's share of
        `_CompiledStep`.
        """
        wd = self._weight_decay[index]
        if self._is_torch:
            lr = learning_rate * m
            return lr, None if wd is None else lr * d * wd
        tensors = self._compiled_step(learning_rate)
        return tensors.rates[index], None if wd is None else tensors.decays[index]

    @contextlib.contextmanager
    def _pausing(self, paused, keys):
        """Guards the wrapped optimizer's writes to `keys` by `paused` (a
        boolean scalar)."""
        self._pause = (paused, keys)
        try:
            yield
        finally:
            self._pause = None

    def _guard_write(self, target, value, kind):
        """The value the wrapped optimizer writes into `target`: unchanged,
        or the target's current value where the variable it serves is paused.

        Costs one `where` per guarded write (fused into the update on XLA).
        """
        pause = self._pause
        if pause is None or _keras_compat.var_key(
                self.inner_optimizer, target) not in pause[1]:
            return value
        paused = pause[0]
        value = _read(value)  # an optimizer may write a variable of its own
        sparse = _is_indexed_slices(value)
        values = value.values if sparse else value
        if kind != "assign":
            keep = 0  # add or subtract nothing
        elif sparse:
            keep = ops.take(_read(target), value.indices, axis=0)
        else:
            keep = _read(target)
        values = ops.where(paused, keep, values)
        return type(value)(values, value.indices, value.dense_shape) if sparse else values

    def _update_and_restore(self, update_step, gradient, variable,
                            learning_rate, index, m, d, paused):
        """For an `update_step` that is not Keras's own, which may write around
        `optimizer.assign*`: update, then put back the old values of the
        variable and its slots wherever m is 0."""
        targets = [variable] + self._slots[index]
        before = [ops.copy(_read(t)) for t in targets]
        self._decay_and_update(update_step, gradient, variable, learning_rate,
                               index, m, d)
        for target, old in zip(targets, before):
            self.inner_optimizer.assign(target, ops.where(paused, old, _read(target)))

    def _hooked_parallel_update_step(self, parallel_update_step, grads,
                                     variables, learning_rate):
        """The torch backend's fused update of all variables at once.

        Keras's torch optimizers update a list of variables with
        `torch._foreach_*` kernels at one scalar rate. The plan keeps that to
        a single fused update whatever the number of distinct multipliers:
        SGD, Adam and AdamW run Keras's kernels with the rate as a per-tensor
        scalar (`_keras_compat.torch_update_with_rates`: no extra pass);
        Adamax, Nadam, Adagrad, Adadelta, Lion and RMSprop take their step at
        the base rate in zeroed variables, which are then scaled by m and
        added back (`_keras_compat.rate_form`). Other optimizers, and a few
        groups of large tensors (where that step form's extra passes cost
        more than a call per group), run one call per group of equal
        multipliers, as PyTorch's param groups do.
        """
        import torch

        plan = self._torch_plan(variables)
        if not plan.running:
            if self._global_state:
                # Everything is paused, but per-step global state (Nadam's)
                # must still advance: update one variable and put it back.
                keep = self._targets(variables[0])
                saved = [t.value.clone() for t in keep]
                parallel_update_step(grads[:1], variables[:1], learning_rate)
                for t, value in zip(keep, saved):
                    t.value.copy_(value)
            return
        self._torch_update(parallel_update_step, plan, grads, variables,
                           learning_rate)

    def _torch_update(self, parallel_update_step, plan, grads, variables,
                      learning_rate):
        import torch

        run_grads, run_vars = grads, variables
        if len(plan.running) < len(variables):
            run_grads = [grads[p] for p in plan.running]
            run_vars = [variables[p] for p in plan.running]
        if plan.decayed:
            # v <- v * (1 - lr * m * d * wd), all decayed variables in one call
            factors = 1 - learning_rate * plan.decay_coefficients
            torch._foreach_mul_(plan.decayed_values, plan.decay_scalars(factors))
        if plan.single is not None:
            parallel_update_step(run_grads, run_vars, learning_rate * plan.single)
        elif plan.form == "rates":
            plan.update(run_grads, learning_rate * plan.rates, plan.rate_scalars)
        elif plan.form == "step":
            moved = plan.moved_values
            # The old values wait as -v: a copy in one call (a transient one,
            # so training does not hold a second copy of the weights).
            negated = torch._foreach_neg(moved)
            torch._foreach_zero_(moved)
            parallel_update_step(run_grads, run_vars, learning_rate)
            torch._foreach_mul_(moved, plan.moved_multipliers)
            torch._foreach_sub_(moved, negated)  # v + m * step, exactly
        else:
            restore = self._global_state if len(plan.groups) > 1 else ()
            begin = [v.value.clone() for v in restore]
            for k, (m, positions) in enumerate(plan.groups):
                for v, value in zip(restore, begin) if k else ():
                    v.value.copy_(value)
                parallel_update_step([grads[p] for p in positions],
                                     [variables[p] for p in positions],
                                     learning_rate * m)

    def _targets(self, variable):
        index = self._active_index[_keras_compat.var_key(self.inner_optimizer, variable)]
        return [variable] + self._slots[index]

    def _torch_plan(self, variables):
        """How to run one fused update of `variables` (positions in the list),
        cached until the multipliers or the variables change."""
        import torch

        signature = (self._version, tuple(map(id, variables)))
        if self._group_cache is not None and self._group_cache[0] == signature:
            return self._group_cache[1]
        lr, decay = self._host_multipliers()
        inner = self.inner_optimizer
        plan = _TorchPlan()
        coefficients, groups = [], {}
        for p, v in enumerate(variables):
            j = self._active_index[_keras_compat.var_key(inner, v)]
            if lr[j] == 0 and self._pause_form == "hold":
                continue  # paused: no update, no decay, state held
            plan.running.append(p)
            plan.multipliers.append(lr[j])
            groups.setdefault(lr[j], []).append(p)
            if lr[j] != 1:
                plan.moved.append(p)
                plan.moved_multipliers.append(lr[j])
            if self._weight_decay[j] is not None and lr[j] != 0:
                plan.decayed.append(p)
                coefficients.append(lr[j] * decay[j] * self._weight_decay[j])
        plan.groups = list(groups.items())
        plan.single = plan.groups[0][0] if len(plan.groups) == 1 else None
        device = variables[0].value.device
        if plan.single is None:
            plan.update = _keras_compat.torch_update_with_rates(
                inner, [variables[p] for p in plan.running])
        if plan.update is not None:
            plan.form = "rates"
            plan.rates = torch.tensor(plan.multipliers, dtype=torch.float32,
                                      device=device)
        elif plan.single is None and self._torch_step_form:
            # The step form costs 4 extra passes over the moved tensors; one
            # call per group costs a fixed overhead per extra group. Rough
            # costs (about 1 us per tensor, 1 ns per number, 50 us per call)
            # pick the cheaper: the step form for many small tensors, groups
            # for few groups of large ones.
            numbers = sum(math.prod(variables[p].shape) for p in plan.moved)
            if 4 * (len(plan.moved) + numbers / 1000) <= 50 * (len(plan.groups) - 1):
                plan.form = "step"
                plan.moved_multipliers = [
                    torch.tensor(m, dtype=variables[p].value.dtype, device=device)
                    for p, m in zip(plan.moved, plan.moved_multipliers)]
        # The torch tensors behind the variables (reading `.value` costs more
        # than the update of a small tensor).
        plan.moved_values = [variables[p].value for p in plan.moved]
        plan.decayed_values = [variables[p].value for p in plan.decayed]
        if plan.decayed:
            plan.decay_coefficients = torch.tensor(
                coefficients, dtype=torch.float32,
                device=variables[plan.decayed[0]].value.device)
        self._group_cache = (signature, plan)
        return plan

    def finalize_variable_values(self, var_list):
        inner = self.inner_optimizer
        self.inner_optimizer.finalize_variable_values([
            v for v in var_list
            if _keras_compat.var_key(inner, v) in self._active_index
        ])

    # Reading and changing multipliers.

    def multiplier_for(self, variable):
        """The learning-rate multiplier in force for `variable`.

        Args:
            variable: One of the model's trainable variables.

        Returns:
            The multiplier, a Python float.
        """
        position = self._position(variable)
        return self._lr_values[position]

    def decay_multiplier_for(self, variable):
        """The weight-decay multiplier in force for `variable`.

        Args:
            variable: One of the model's trainable variables.

        Returns:
            The decay multiplier, a Python float.
        """
        position = self._position(variable)
        return self._decay_values[position]

    def _position(self, variable):
        if not self.built:
            raise ValueError(
                "The optimizer is not built yet, so rules are not resolved. "
                "Compile and fit the model, or call "
                "`optimizer.build(model.trainable_variables)`."
            )
        key = self._var_key(variable)
        if key not in self._trainable_variables_indices:
            raise ValueError(
                f"{getattr(variable, 'path', variable)!r} is not one of the "
                "trainable variables this optimizer was built for."
            )
        return self._trainable_variables_indices[key]

    def set_multipliers(self, multipliers=None, decay_multipliers=None):
        """Changes some rules; the new values apply from the next step.

        The given rules replace the rules with the same keys and join the
        others; all rules are then resolved again. Inside a compiled `fit`
        (`jit_compile=True`, `tf.function`, JAX) nothing is retraced and no
        optimizer state is reset. From a callback on the JAX backend, reach
        the optimizer as `self.model.optimizer`, which syncs the training
        state first.

        Args:
            multipliers: Optional rule map of learning-rate multipliers.
            decay_multipliers: Optional rule map of decay multipliers.

        Raises:
            ValueError: if a variable that was frozen (multiplier 0) when the
                optimizer was built, and so has no optimizer state, would get
                a non-zero multiplier. Build with `keep_frozen_state=True` to
                unfreeze later.
        """
        lr_rules = _rules.merge(self._lr_rules, _rules.parse(multipliers, _LR))
        decay_rules = _rules.merge(
            self._decay_rules, _rules.parse(decay_multipliers, _DECAY))
        if self.built:
            model = None if self._model_ref is None else self._model_ref()
            old = (self._lr_rules, self._decay_rules)
            self._lr_rules, self._decay_rules = lr_rules, decay_rules
            try:
                lr_values, decay_values = self._resolve(
                    self._trainable_variables, model)
                active = set(self._active_positions)
                for i, m in enumerate(lr_values):
                    if m != 0 and i not in active:
                        raise ValueError(
                            f"Variable '{self._trainable_variables[i].path}' "
                            "had multiplier 0 when the optimizer was built, "
                            "so it has no optimizer state and cannot be "
                            f"given multiplier {m} now. Build the optimizer "
                            "with `keep_frozen_state=True` to unfreeze "
                            "variables later, or compile the model again "
                            "with a new optimizer."
                        )
            except Exception:
                self._lr_rules, self._decay_rules = old
                raise
            before = self._lr_values
            self._lr_values, self._decay_values = lr_values, decay_values
            self._write_vectors()
            self._clear_velocities(before)
        self._lr_rules, self._decay_rules = lr_rules, decay_rules

    # Saving.

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._read_vectors()

    def set_weights(self, weights):
        super().set_weights(weights)
        self._read_vectors()

    def _read_vectors(self):
        """Refreshes the host-side mirror after the vectors were restored."""
        if not self.built:
            return
        lr = ops.convert_to_numpy(self._lr_multipliers)
        decay = ops.convert_to_numpy(self._decay_multipliers)
        for j, i in enumerate(self._active_positions):
            # Keep the exact Python value where the float32 copy agrees.
            if np.float32(self._lr_values[i]) != lr[j]:
                self._lr_values[i] = float(lr[j])
            if np.float32(self._decay_values[i]) != decay[j]:
                self._decay_values[i] = float(decay[j])
        self._version += 1
        self._clear_velocities()  # (files saved by earlier versions may hold some)

    def _clear_velocities(self, before=None):
        """Zeroes the velocity (`_keras_compat.velocity_slots`) of every
        variable whose pause begins: whose multiplier is 0 now and was not in
        `before` (the previous values; None: every paused variable). At rate
        0 the velocity then stays 0 and the variable stays where it is."""
        for j, i in enumerate(self._active_positions):
            if self._lr_values[i] == 0 and (before is None or before[i] != 0):
                for slot in self._velocities[j]:
                    slot.assign(ops.zeros(slot.shape, slot.dtype))

    def get_config(self):
        lr_rules, decay_rules, saved = self._lr_rules, self._decay_rules, None
        if self.built:
            # Once built, the resolution is what counts: rules whose keys are
            # objects or callables cannot be saved, and Keras gives variables
            # new paths when a model is loaded, so path rules could match
            # differently. The table is matched by position and shape.
            lr_rules, decay_rules = [], []
            saved = {
                "paths": [v.path for v in self._trainable_variables],
                "shapes": [list(v.shape) for v in self._trainable_variables],
                "multipliers": list(self._lr_values),
                "decay_multipliers": list(self._decay_values),
                "has_state": [i in set(self._active_positions)
                              for i in range(len(self._trainable_variables))],
            }
        elif self._saved is not None:
            saved = self._saved
        elif (_rules.needs_resolution_to_save(lr_rules)
              or _rules.needs_resolution_to_save(decay_rules)):
            raise ValueError(
                "This LRMultiplier has rules that can only be saved once "
                "resolved (layers, variables, callables or unregistered "
                "classes), and it is not built yet. Build it first (fit the "
                "model, or call `model.optimizer.build("
                "model.trainable_variables)`), or use string rules."
            )
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer),
            "multipliers": _rules.to_config(lr_rules),
            "decay_multipliers": _rules.to_config(decay_rules),
            "keep_frozen_state": self.keep_frozen_state,
            "saved_resolution": saved,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.optimizers.deserialize(
            config.pop("optimizer"), custom_objects=custom_objects)
        for key in ("multipliers", "decay_multipliers"):
            config[key] = _rules.from_config(config.get(key) or [],
                                             custom_objects)
        return cls(inner, **config)


# Variables where the step form is exact to the rounding of the step itself.
_FULL_PRECISION = ("float32", "float64")


class _TorchPlan:
    """Positions of the variables of one fused torch update, by role."""

    def __init__(self):
        self.running, self.multipliers = [], []
        self.moved, self.moved_multipliers, self.moved_values = [], [], []
        self.decayed, self.decay_coefficients, self.decayed_values = [], None, []
        self.groups, self.single, self.form = [], None, None
        self.update, self.rates = None, None
        self.rate_scalars, self.decay_scalars = _Scalars(), _Scalars()


class _Scalars:
    """Turns a 1-d tensor into a list of 0-d tensors, the per-tensor scalars
    of `torch._foreach_*` (Python floats there cost a new tensor per tensor
    per call). The 0-d tensors are views of one buffer, refilled by one copy:
    making them anew would cost about a microsecond each per step."""

    def __init__(self):
        self._buffer = self._views = None

    def __call__(self, vector):
        buffer = self._buffer
        if (buffer is None or buffer.shape != vector.shape
                or buffer.dtype != vector.dtype or buffer.device != vector.device):
            buffer = self._buffer = vector.detach().clone()
            self._views = list(buffer.unbind())
        else:
            buffer.copy_(vector)
        return self._views


class _CompiledStep:
    """What a compiled step (TensorFlow, JAX) computes once for all
    variables, each split into one scalar per variable.

    The multipliers are read from optimizer variables inside the step, so
    that `set_multipliers` needs no retracing; once per step, because
    TensorFlow runs op by op (no XLA on CPU by default), and a read or a
    product per variable would be ops per variable. Each list holds one
    entry per active variable:

    - `rates`: `lr * m`, the rate each variable's update runs at;
    - `decays`: `lr * m * d * weight_decay` (None without weight decay);
    - `multipliers`: `m` itself, for the step form (JAX's Adam and its
      kin), else None;
    - `paused`: whether `m == 0`, where a pause holds the optimizer's
      writes (`pause_form` "hold"), else None.
    """

    def __init__(self, opt, learning_rate):
        m = ops.convert_to_tensor(opt._lr_multipliers)
        rates = ops.multiply(learning_rate, m)
        self.learning_rate = learning_rate
        self.rates = ops.unstack(rates)
        self.decays = None
        if any(w is not None for w in opt._weight_decay):
            weight_decay = np.array([0.0 if w is None else w for w in opt._weight_decay],
                                    "float32")
            self.decays = ops.unstack(
                rates * ops.convert_to_tensor(opt._decay_multipliers) * weight_decay)
        self.multipliers = ops.unstack(m) if opt._step_form else None
        self.paused = (ops.unstack(ops.equal(m, 0.0))
                       if opt._pause_form == "hold" else None)


def _is_indexed_slices(value):
    """A sparse gradient-like value (TensorFlow's `IndexedSlices`)."""
    return all(hasattr(value, a) for a in ("values", "indices", "dense_shape"))


def _read(variable):
    """The current value of a Keras or backend variable, as a tensor."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _refuse_unsynchronised_torch_fit():
    """Raises when Keras's own torch `train_step` runs in a process group.

    Keras has no multi-process `fit` on the torch backend (`keras.distribution`
    is JAX-only): its `train_step` neither wraps the model in
    `DistributedDataParallel` nor all-reduces gradients, so every process
    would silently train a diverging copy of the model. Custom loops over a
    `DistributedDataParallel` model, whose gradients are averaged, are fine.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    if world > 1 and _keras_compat.called_from_keras_torch_train_step():
        raise RuntimeError(
            "LRMultiplier is being applied by Keras's own `train_step` "
            "(`model.fit` / `train_on_batch`) on the torch backend while "
            f"torch.distributed runs a process group of world size {world}. "
            "Keras's torch trainer does not synchronise gradients across "
            "processes, so each process would train its own diverging copy "
            "of the model. Train in a custom loop instead: wrap the model in "
            "`torch.nn.parallel.DistributedDataParallel`, call "
            "`loss.backward()` through it, then `optimizer.apply([v.value.grad "
            "for v in model.trainable_variables], model.trainable_variables)`"
            " (see the README, 'Distributed training'). Or use the JAX "
            "backend's `keras.distribution` or TensorFlow's `tf.distribute`."
        )


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


def _check_saved(saved, var_list):
    shapes = [list(v.shape) for v in var_list]
    if saved["shapes"] != shapes:
        raise ValueError(
            "This LRMultiplier was saved for a model with "
            f"{len(saved['shapes'])} trainable variables (first: "
            f"{list(zip(saved['paths'], saved['shapes']))[:3]}), but it is "
            f"being built for {len(shapes)} others (first: "
            f"{[(v.path, s) for v, s in zip(var_list, shapes)][:3]}). Load it "
            "with the model it was saved with."
        )
    return saved["multipliers"], saved["decay_multipliers"]


def any_unbuilt():
    """Whether some LRMultiplier may still claim variables when it builds."""
    return len(_UNBUILT) > 0


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
