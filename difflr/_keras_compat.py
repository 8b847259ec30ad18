"""Every use of a private Keras API in difflr lives in this module.

difflr depends on Keras's public API everywhere else. The few places where Keras
offers no public hook are gathered here so that a Keras upgrade has one file to
check; `check_keras_version` tests at import that the hooks found on classes
are there, and `_hook` fails clearly when one found on an instance is gone.

Checked against Keras 3.12.0 (the oldest supported release) through 3.15.1
and the 3.16 preview pinned in `.ci/keras-nightly.txt` (3.16.0.dev2026102704);
CI runs the whole suite on the oldest and the newest.
Older releases cannot run with current TensorFlow (2.21 needs Keras >= 3.12)
or JAX (Keras 3.8 calls the removed `jax.spmd_mode`).

The private names, where difflr uses them, and why each is unavoidable:

- `Optimizer.update_step(gradient, variable, learning_rate)`: documented for
  subclasses, but a wrapper has to intercept it on an existing instance to
  give each variable its own learning rate while the wrapped optimizer keeps
  running its own `apply` (clipping, accumulation, EMA, distribution).
  `install_update_hooks`, used by `LRMultiplier.build`.
- `Optimizer._parallel_update_step(grads, variables, learning_rate)`: the torch
  backend's fused (`torch._foreach_*`) update of many variables at one rate.
  `install_update_hooks`, `has_fused_update`; `difflr/_update/torch_sgd.py`
  and `torch_adam.py` restate SGD's and Adam's with one rate per variable.
- `Optimizer._apply_weight_decay(variables)`: decoupled weight decay, which
  must use each variable's own rate and decay multiplier: switched off by
  `install_update_hooks`, checked by `check_weight_decay_is_standard`.
- `Optimizer._use_weight_decay(variable)` (with `exclude_from_weight_decay`)
  and Muon's `_should_use_adamw`: which variables the optimizer decays,
  `weight_decay_for`.
- `Optimizer._var_key(variable)`: how the optimizer identifies a variable
  (the TF backend passes `tf.Variable`s, not Keras variables, to
  `update_step`). `var_key`, `position_of`.
- `Optimizer._get_variable_index(variable)` and the slot lists (SGD's
  `momentums`; Adam's `_momentums`, `_velocities`, `_velocity_hats`;
  RMSprop's `_momentums`): `sgd_momentums`, `adam_moments`, `velocity_slots`.
  The slots of any optimizer are also found by shape (`per_variable_slots`),
  to hold a paused variable's state and to tell per-variable slots from
  per-step global state (Nadam's `u_product`), which uses `_iterations` and
  `_learning_rate` (`per_step_state`).
- `Optimizer._trainable_variables`, `_trainable_variables_indices` and
  `_check_variables_are_known`: the variables an optimizer was built for,
  read on the `LRMultiplier` itself (a Keras optimizer): `built_variables`,
  `position_of`, `check_known`.
- `Layer._trainable_variables`: the variables a layer created trainable,
  which it keeps while frozen (`trainable = False`, `enable_lora`) and
  turns back on when unfrozen, so that groups keep their place whatever is
  frozen now (`created_trainable`, used by `difflr.groups`).
- `Optimizer._iterations`: the step a learning-rate schedule is called with
  (`_get_current_learning_rate`), the count of `apply` calls, which the
  public `iterations` divides by `gradient_accumulation_steps`: a scheduled
  multiplier follows the same step as the base rate (`schedule_step`).
- `Layer._flatten_layers()`: the nested layers of a layer, to rank rules from
  the innermost layer out and to group models. `nested_layers`,
  `direct_layers`.
- a functional model's `_nodes_by_depth` and `Node.parent_nodes`: its graph,
  to split it into layer groups by topological depth (`functional_nodes`,
  used by `difflr.groups`).
- the update math of Keras's own optimizers: which of them move a variable
  by the learning rate times a step that depends on neither (`scaling`), so
  that the learning rate can be applied per variable without leaving the
  backend's fused path. Keras's optimizers write only through
  `optimizer.assign*` (its own test, `optimizer_sparse_test`, enforces that):
  a paused variable's writes are guarded there (`install_write_guard`).
- `Optimizer._model_variables_moving_average`: the EMA averages, which
  `keras.callbacks.SwapEMAWeights` reads on the optimizer inside a
  `LossScaleOptimizer`: an `LRMultiplier` shows its wrapped optimizer's there
  (`MOVING_AVERAGES`, `moving_averages`).
- `Variable._value`: the backend array or tensor behind a Keras variable,
  for two facts no public API gives. Inside a JAX `fit`, Keras sets it to
  None (it purges the optimizer's variables while the loop holds their
  values), and the public `value` then returns the initializer's values
  instead (`is_purged`). And whether a variable was written since it was
  last read: a JAX array is replaced on every write, a torch tensor counts
  its in-place writes (`write_stamp`). Checked against Keras 3.12.0 to
  3.16.0.dev.
- `JAXTrainer.jax_state_sync()`: makes the model's variables the training
  state inside a JAX `fit`, before `set_multipliers` writes its vectors
  (`sync_training_state`).
- `keras.src.backend.torch.trainer.TorchTrainer.train_step` (`Trainer` from
  Keras 3.16) and its `ddp_model` (3.16): recognised on the call stack, to
  refuse `model.fit` in a multi-process torch group where Keras's torch
  trainer does not synchronise gradients (`in_unsynchronised_torch_fit`).

`find_model` and `find_compiled_model` rely on no private name, but on how
Keras calls an optimizer: `build` and `get_config` from inside a method of the
model that owns the variables (`fit`, `save`).
"""

import re
import sys
import warnings

import keras

OLDEST_KERAS = (3, 12, 0)
NEWEST_CHECKED_KERAS = (3, 16, 0)


def keras_version():
    """The installed Keras's version as `(major, minor, patch)`."""
    return _version_tuple(keras.__version__)


def _version_tuple(version):
    parts = []
    for piece in version.split(".")[:3]:
        match = re.match(r"\d+", piece)  # "0rc1" -> 0, "dev2026" -> 0
        parts.append(int(match.group()) if match else 0)
    return tuple(parts + [0] * (3 - len(parts)))


# The private hooks difflr reaches on Keras classes (see the module docstring);
# those on instances go through `_hook`.
_CLASS_HOOKS = tuple(
    (keras.optimizers.Optimizer, name)
    for name in ("update_step", "_apply_weight_decay", "_use_weight_decay",
                 "_var_key", "_get_variable_index", "_check_variables_are_known")
) + ((keras.layers.Layer, "_flatten_layers"),)


def _hook(owner, name):
    """`owner.name`, a private Keras attribute, or a clear error if it is gone."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise RuntimeError(
            f"difflr does not know Keras {keras.__version__}: "
            f"`{type(owner).__name__}.{name}`, which difflr relies on, is gone. "
            "difflr was checked against Keras "
            f"{'.'.join(map(str, OLDEST_KERAS))} to "
            f"{'.'.join(map(str, NEWEST_CHECKED_KERAS))}; install one of those "
            "or a newer difflr."
        ) from None


def check_keras_version():
    """Fails clearly on a Keras difflr cannot work with, warns on a new one."""
    version = _version_tuple(keras.__version__)
    if version < OLDEST_KERAS:
        raise ImportError(
            f"difflr needs Keras >= {'.'.join(map(str, OLDEST_KERAS))}, but "
            f"Keras {keras.__version__} is installed. Upgrade it with "
            "`pip install -U keras`."
        )
    missing = [name for owner, name in _CLASS_HOOKS if not hasattr(owner, name)]
    if missing:
        raise ImportError(
            f"difflr does not know Keras {keras.__version__}: the hooks it "
            f"relies on ({', '.join(missing)}) are gone. difflr was checked "
            "against Keras "
            f"{'.'.join(map(str, OLDEST_KERAS))} to "
            f"{'.'.join(map(str, NEWEST_CHECKED_KERAS))}; install one of "
            "those or a newer difflr."
        )
    if version[:2] > NEWEST_CHECKED_KERAS[:2]:
        warnings.warn(
            f"difflr was checked against Keras up to "
            f"{'.'.join(map(str, NEWEST_CHECKED_KERAS))}, and Keras "
            f"{keras.__version__} is installed. Its hooks are present, so "
            "difflr will run; please report any problem.",
            stacklevel=3,
        )


def var_key(optimizer, variable):
    """The key `optimizer` uses for `variable` (Keras or backend variable)."""
    return optimizer._var_key(variable)


def built_variables(optimizer):
    """The variables a built `optimizer` was built for, in order."""
    return _hook(optimizer, "_trainable_variables")


def position_of(optimizer, variable):
    """The index of `variable` among `built_variables(optimizer)`, or None."""
    return _hook(optimizer, "_trainable_variables_indices").get(
        optimizer._var_key(variable))


def check_known(optimizer, variables):
    """Raises Keras's own error if `optimizer` was not built for `variables`."""
    optimizer._check_variables_are_known(variables)


def nested_layers(layer):
    """`layer` and every layer nested in it, at any depth."""
    return list(layer._flatten_layers(include_self=True, recursive=True))


def created_trainable(layer):
    """The variables of `layer` (at any depth) created trainable, whether they
    train now or not. `layer.trainable = False` (and KerasHub's
    `enable_lora`, and Keras's own `enable_lora` on a kernel) only clears
    `variable.trainable`: Keras keeps such variables in the private
    `_trainable_variables` of their layer (Keras 3.0 to 3.16.0.dev), which
    is what `trainable = True` turns back on. Variables created
    non-trainable (BatchNormalization's moving statistics) are not in it."""
    return [v for sub in nested_layers(layer)
            for v in getattr(sub, "_trainable_variables", ())]


def direct_layers(layer):
    """The layers directly inside `layer`, in the order they were assigned."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def functional_nodes(model):
    """A functional model's graph in topological order, or None.

    Returns `(operation, parents)` pairs, one per call of an operation in the
    model (inputs first), `parents` being the indices of the earlier pairs
    whose outputs it takes. Keras has no public graph API: this reads the
    private `_nodes_by_depth` (depth counted from the outputs) and
    `Node.parent_nodes`, both unchanged from Keras 3.0 to 3.16.0.dev.
    """
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if not isinstance(model, keras.Model) or not isinstance(nodes_by_depth, dict):
        return None
    entries, index = [], {}
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            parents = [index[id(p)] for p in node.parent_nodes if id(p) in index]
            index[id(node)] = len(entries)
            entries.append((node.operation, parents))
    return entries


def has_fused_update(optimizer):
    """Whether the optimizer updates many variables at once (torch backend)."""
    return hasattr(optimizer, "_parallel_update_step")


def per_variable_slots(optimizer, variables):
    """The optimizer's slot variables of each of the `variables` it was built
    on: `slots[i]` lists the momentums, accumulators, EMA averages... of
    variable `i`.

    Keras optimizers keep slots in lists aligned with their variables (looked
    up with `_get_variable_index`), with None where a variable has none, so
    that is what this looks for among the optimizer's attributes.
    """
    count = len(variables)
    slots = [[] for _ in range(count)]
    for value in vars(optimizer).values():
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
            continue
        try:
            items = list(value)
        except TypeError:
            continue
        if len(items) != count or not any(isinstance(x, keras.Variable) for x in items):
            continue
        if any(x is v for x, v in zip(items, variables)):
            continue  # the optimizer's own list of the model variables
        if all(x is None or isinstance(x, keras.Variable) for x in items):
            for i, slot in enumerate(items):
                if slot is not None:
                    slots[i].append(slot)
    return slots


def per_step_state(optimizer, slots):
    """Optimizer variables that are neither slots, the step counter nor the
    learning rate: per-step global state, such as Nadam's `u_product`."""
    skip = {id(v) for per_variable in slots for v in per_variable}
    skip |= {id(_hook(optimizer, "_iterations")), id(_hook(optimizer, "_learning_rate"))}
    return [v for v in optimizer.variables if id(v) not in skip]


def install_update_hooks(optimizer, update_step, parallel_update_step):
    """Routes `optimizer`'s per-variable and fused updates through difflr.

    The hooks receive the original bound method as their first argument
    (`parallel_update_step` may be None: no fused hook). The optimizer's own
    weight decay is switched off: difflr applies it inside
    the hooks, scaled per variable, at the same point of the step.
    """
    original_update = optimizer.update_step

    def hooked_update_step(gradient, variable, learning_rate):
        return update_step(original_update, gradient, variable, learning_rate)

    object.__setattr__(optimizer, "update_step", hooked_update_step)
    if parallel_update_step is not None and has_fused_update(optimizer):
        original_parallel = optimizer._parallel_update_step

        def hooked_parallel(grads, variables, learning_rate):
            return parallel_update_step(
                original_parallel, grads, variables, learning_rate
            )

        object.__setattr__(optimizer, "_parallel_update_step", hooked_parallel)
    object.__setattr__(optimizer, "_apply_weight_decay", lambda variables: None)


def install_write_guard(optimizer, guard):
    """Passes every write of `optimizer` through `guard`.

    `optimizer.assign`, `assign_add` and `assign_sub` are the public methods
    through which Keras optimizers change a variable or a slot. After this,
    `optimizer.assign(variable, value)` writes `guard(variable, value, "assign")`
    instead (likewise `"assign_add"`, `"assign_sub"`).
    """
    for kind in ("assign", "assign_add", "assign_sub"):
        original = getattr(optimizer, kind)

        def hooked(variable, value, original=original, kind=kind):
            return original(variable, guard(variable, value, kind))

        object.__setattr__(optimizer, kind, hooked)


def writes_through_assign(optimizer):
    """Whether `optimizer.update_step` is Keras's own, which changes variables
    and slots only through `optimizer.assign*` (a subclass may write around
    them, so difflr cannot rely on guarding those writes)."""
    return _keras_own(type(optimizer).update_step)


# Keras optimizers whose update is `variable -= learning_rate * step`, with a
# step and a state that depend on neither the learning rate nor the value of
# the variable (RMSprop only without momentum: its momentum accumulates
# `learning_rate * ...`).
_RATE_TIMES_STEP = ("Adam", "AdamW", "Adamax", "Nadam", "Adagrad", "Adadelta",
                    "Lion", "RMSprop")


def scaling(optimizer):
    """How the learning rate enters `optimizer`'s update, if it is Keras's own.

    Returns:
        - `"step"`: the update is `v <- v - lr * s`, where the step `s` and the
          optimizer state depend on neither `lr` nor the value of `v` (Adam,
          AdamW, Adamax, Nadam, Adagrad, Adadelta, Lion, RMSprop without
          momentum). Then a rate `lr * m` is the same as running the update at
          `lr` on a variable set to 0, which leaves `-lr * s` in it, and adding
          `m` times that to the variable.
        - `"gradient"`: the gradient enters only as `lr * g` (SGD, with any
          momentum and Nesterov): a rate `lr * m` is the same as the gradient
          `m * g` at rate `lr`.
        - None: anything else, including subclasses that override the update.

    Checked against the update math of Keras 3.12.0 to 3.16.0.dev, on every
    backend (the torch backend's fused `_parallel_update_step` too: 3.16
    rewrote SGD's and Adadelta's op sequences, with the same math).
    """
    if updates_as(optimizer, keras.optimizers.SGD):
        return "gradient"
    for name in _RATE_TIMES_STEP:
        if updates_as(optimizer, getattr(keras.optimizers, name)):
            if name == "RMSprop" and optimizer.momentum:
                return None
            return "step"
    return None


def velocity_slots(optimizer, variables):
    """The slots of each of `variables` that hold a velocity: the learning
    rate times an average of gradients, which moves the variable even at
    rate 0 (Keras's SGD `momentums` and RMSprop `_momentums`, with momentum).

    Returns:
        A list per variable: its velocity slot, or nothing.
    """
    if updates_as(optimizer, keras.optimizers.SGD) and optimizer.momentum:
        return [[slot] for slot in sgd_momentums(optimizer, variables)]
    if updates_as(optimizer, keras.optimizers.RMSprop) and optimizer.momentum:
        return [[slot] for slot in _slots(optimizer, "_momentums", variables)]
    return [[] for _ in variables]


def sgd_momentums(optimizer, variables):
    """Keras SGD's momentum slot of each of `variables`."""
    return _slots(optimizer, "momentums", variables)


def adam_moments(optimizer, variables):
    """Keras Adam's first moments, second moments and AMSGrad maxima (None
    without AMSGrad) of each of `variables`, as three lists."""
    return (_slots(optimizer, "_momentums", variables),
            _slots(optimizer, "_velocities", variables),
            _slots(optimizer, "_velocity_hats", variables) if optimizer.amsgrad else None)


def _slots(optimizer, name, variables):
    slots = _hook(optimizer, name)
    return [slots[optimizer._get_variable_index(v)] for v in variables]


def updates_as(optimizer, cls):
    """Whether `optimizer` is a `cls` that updates with `cls`'s own math: its
    `update_step`, and on torch a fused `_parallel_update_step` from Keras."""
    fused = getattr(type(optimizer), "_parallel_update_step", None)
    return (isinstance(optimizer, cls)
            and type(optimizer).update_step is cls.update_step
            and (fused is None or _keras_own(fused)))


def _keras_own(function):
    return (getattr(function, "__module__", "") or "").startswith("keras.")


def weight_decay_for(optimizer, variable):
    """The weight decay the optimizer would apply to `variable`, or None.

    Follows the optimizer's own rules: `exclude_from_weight_decay`, and Muon's
    separate `adam_weight_decay` for the variables it trains with AdamW.
    """
    if not optimizer._use_weight_decay(variable):
        return None
    should_use_adamw = getattr(optimizer, "_should_use_adamw", None)
    if should_use_adamw is not None and hasattr(optimizer, "adam_weight_decay"):
        if should_use_adamw(variable):
            return optimizer.adam_weight_decay
    return optimizer.weight_decay


def check_weight_decay_is_standard(optimizer):
    """Raises if a custom `_apply_weight_decay` would be bypassed."""
    if optimizer.weight_decay is None and not getattr(
        optimizer, "adam_weight_decay", None
    ):
        return
    impl = type(optimizer)._apply_weight_decay
    module = getattr(impl, "__module__", "") or ""
    if not module.startswith("keras."):
        raise NotImplementedError(
            f"{type(optimizer).__name__} overrides `_apply_weight_decay`, so "
            "difflr cannot scale its weight decay per variable. Use "
            "`weight_decay=None` on it, or derive from a Keras optimizer "
            "without overriding `_apply_weight_decay`."
        )


def find_model(variables, max_depth=12):
    """The Keras model that owns `variables`, found on the call stack.

    `model.compile`/`fit`/`load_model` build the optimizer from inside a model
    method, so the model is `self` a few frames up. Used only to resolve rules
    that need the model's layers (layer classes); returns None when not found.
    """
    wanted = {id(v) for v in variables}
    frame = sys._getframe(1)
    seen = set()
    for _ in range(max_depth):
        if frame is None:
            break
        for value in frame.f_locals.values():
            if isinstance(value, keras.Model) and id(value) not in seen:
                seen.add(id(value))
                owned = {id(v) for v in value.trainable_variables}
                if wanted <= owned:
                    return value
        frame = frame.f_back
    return None


# Where a Keras optimizer with `use_ema=True` keeps its averages, aligned with
# its `_trainable_variables`. `keras.callbacks.SwapEMAWeights` reads both on
# the optimizer a `LossScaleOptimizer` wraps, which may be an `LRMultiplier`.
MOVING_AVERAGES = "_model_variables_moving_average"


def moving_averages(optimizer):
    """`optimizer`'s EMA averages (Keras's `_model_variables_moving_average`),
    or None when it has none (no `use_ema`, not built)."""
    return getattr(optimizer, MOVING_AVERAGES, None)


def is_purged(variable):
    """Whether Keras removed `variable`'s value while a JAX `fit` holds it
    in its training state (`JAXTrainer._purge_model_variables`): reading
    the variable then gives its initial value, not the one in force."""
    return keras.backend.backend() == "jax" and variable._value is None


def write_stamp(variable):
    """Something that changes whenever `variable` is written, cheap to take
    (no device read), or None where no such thing exists (TensorFlow).
    Compare two with `same_stamps`."""
    backend = keras.backend.backend()
    value = getattr(variable, "_value", None)
    if value is None or backend not in ("jax", "torch"):
        return None
    # JAX arrays are immutable: every assign puts a new one in place.
    return (value, value._version if backend == "torch" else 0)


def same_stamps(a, b):
    """Whether two tuples of `write_stamp`s say that nothing was written."""
    if a is None or b is None:
        return False
    return all(x[0] is y[0] and x[1] == y[1] for x, y in zip(a, b))


def sync_training_state(model):
    """Makes `model`'s variables the training state, on the JAX backend.

    Inside a JAX `fit`, Keras trains on a copy of the variables' values and
    writes it back at the end; a callback that reaches the model through
    `self.model` first syncs it (`JAXTrainer.jax_state_sync`), and the loop
    then reads the variables again. An optimizer captured elsewhere is not
    synced, so a write to its variables would be lost: difflr syncs before
    writing the multipliers. A no-op on the other backends and outside `fit`.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def find_compiled_model(optimizer, max_depth=40):
    """The Keras model compiled with `optimizer` (possibly inside a
    `LossScaleOptimizer`), found on the call stack, or None.

    `model.save` serializes the optimizer from inside its own methods, so the
    model being saved is a few frames up.
    """
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            break
        for value in frame.f_locals.values():
            if isinstance(value, keras.Model):
                seen = getattr(value, "optimizer", None)
                while seen is not None and seen is not optimizer:
                    seen = getattr(seen, "inner_optimizer", None)
                if seen is optimizer:
                    return value
        frame = frame.f_back
    return None


def in_unsynchronised_torch_fit(max_depth=16):
    """Whether the torch backend's own `Model.train_step` is on the call stack
    without gradient synchronisation across processes.

    That `train_step` (used by `fit` and `train_on_batch`, also when a
    subclass calls `super().train_step`) computes and applies gradients in
    one process. From Keras 3.16 on it runs the model through
    `DistributedDataParallel` (its `ddp_model`) when torch.distributed is
    initialised and the distribution is None or `DataParallel`, and under
    `ModelParallel` trains DTensors: gradients are then reduced. A few frames separate it from the optimizer
    (`LossScaleOptimizer`, ...). Checked against Keras 3.12.0 to 3.16.0.dev,
    where it lives in `keras.src.backend.torch.trainer` (as `TorchTrainer`
    up to 3.15, `Trainer` from 3.16).
    """
    from keras.src.backend.torch import trainer

    cls = getattr(trainer, "TorchTrainer", None) or _hook(trainer, "Trainer")
    target = cls.train_step.__code__
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return False
        if frame.f_code is target:
            model = frame.f_locals.get("self")
            if getattr(model, "ddp_model", None) is not None:
                return False
            # Keras >= 3.16 under a `keras.distribution` (ModelParallel):
            # the variables are DTensors, whose gradients are reduced.
            return not (keras_version() >= (3, 16, 0)
                        and keras.distribution.distribution() is not None)
        frame = frame.f_back
    return False


def schedule_step(optimizer):
    """The step `optimizer`'s learning-rate schedule is called with:
    `_iterations`, the count of `apply` calls, which `iterations` divides by
    `gradient_accumulation_steps` (`_get_current_learning_rate`, Keras 3.12
    to 3.16)."""
    return optimizer._iterations
