"""Every use of a private Keras API in difflr lives in this module.

difflr depends on Keras's public API everywhere else. The few places where Keras
offers no public hook are gathered here so that a Keras upgrade has one file to
check. Each function says which private name it touches.

Checked against Keras 3.12.0 (the oldest supported release) through 3.15.1.
Older releases cannot run with current TensorFlow (2.21 needs Keras >= 3.12)
or JAX (Keras 3.8 calls the removed `jax.spmd_mode`).

The private names, and why each is unavoidable:

- `optimizer.update_step(gradient, variable, learning_rate)`: documented for
  subclasses, but a wrapper has to intercept it on an existing instance to
  give each variable its own learning rate while the wrapped optimizer keeps
  running its own `apply` (clipping, accumulation, EMA, distribution).
- `optimizer._parallel_update_step(grads, variables, learning_rate)`: the torch
  backend's fused (`torch._foreach_*`) update of many variables at one rate.
  For SGD, Adam and AdamW its math is restated with one rate per variable
  (`torch_update_with_rates`), reading their slot lists and
  `_get_variable_index`: a copy of Keras's kernels, checked against both ends
  of the supported range by the contract tests.
- `optimizer._apply_weight_decay(variables)`: decoupled weight decay, which
  must use each variable's own rate and decay multiplier.
- `optimizer._var_key(variable)`: how the optimizer identifies a variable
  (the TF backend passes `tf.Variable`s, not Keras variables, to
  `update_step`).
- the optimizer's slot lists (`_momentums`, `_velocities`, Adafactor's `_r`,
  ...): found by shape, to pause a variable whose multiplier is 0 and to tell
  per-variable slots from per-step global state (Nadam's `u_product`); and
  by name, SGD's `momentums` and RMSprop's `_momentums`, the velocities
  cleared when a pause begins (`velocity_slots`).
- `layer._flatten_layers()`: the nested layers of a layer, to rank rules from
  the innermost layer out.
- the update math of Keras's own optimizers (`update_step`, and on torch
  `_parallel_update_step`): which of them move a variable by the learning rate
  times a step that depends on neither (`rate_form`), so that the learning
  rate can be applied per variable without leaving the backend's fused path.
  Keras's optimizers write only through `optimizer.assign*` (its own test,
  `optimizer_sparse_test`, enforces that): a paused variable's writes are
  guarded there (`install_write_guard`).
- a functional model's `_nodes_by_depth` and `Node.parent_nodes`: its graph,
  to split it into layer groups by topological depth (`difflr.groups`).
- `keras.src.backend.torch.trainer.TorchTrainer.train_step`: recognised on the
  call stack, to refuse `model.fit` in a multi-process torch group, where
  Keras's torch trainer would not synchronise gradients.
"""

import sys
import warnings

import re
import keras

OLDEST_KERAS = (3, 12, 0)
NEWEST_CHECKED_KERAS = (3, 15, 1)


def _version_tuple(version):
    parts = []
    for piece in version.split(".")[:3]:
        match = re.match(r"\d+", piece)  # "0rc1" -> 0, "dev2026" -> 0
        parts.append(int(match.group()) if match else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def check_keras_version():
    """Fails clearly on a Keras difflr cannot work with, warns on a new one."""
    version = _version_tuple(keras.__version__)
    if version < OLDEST_KERAS:
        raise ImportError(
            f"difflr needs Keras >= {'.'.join(map(str, OLDEST_KERAS))}, but "
            f"Keras {keras.__version__} is installed. Upgrade it with "
            "`pip install -U keras`."
        )
    base = keras.optimizers.Optimizer
    missing = [
        name
        for name in ("update_step", "_apply_weight_decay", "_var_key",
                     "add_variable_from_reference", "_backend_update_step")
        if not hasattr(base, name)
    ]
    if missing or not hasattr(keras.layers.Layer, "_flatten_layers"):
        raise ImportError(
            f"difflr does not know Keras {keras.__version__}: the optimizer "
            f"hooks it relies on ({', '.join(missing) or '_flatten_layers'}) "
            "are gone. difflr was checked against Keras "
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


def nested_layers(layer):
    """`layer` and every layer nested in it, at any depth."""
    return list(layer._flatten_layers(include_self=True, recursive=True))


def functional_nodes(model):
    """A functional model's graph in topological order, or None.

    Returns `(operation, parents)` pairs, one per call of an operation in the
    model (inputs first), `parents` being the indices of the earlier pairs
    whose outputs it takes. Keras has no public graph API: this reads the
    private `_nodes_by_depth` (depth counted from the outputs) and
    `Node.parent_nodes`, both unchanged from Keras 3.0 to 3.15.
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
    skip |= {id(optimizer._iterations), id(optimizer._learning_rate)}
    return [v for v in optimizer.variables if id(v) not in skip]


def install_update_hooks(optimizer, update_step, parallel_update_step):
    """Routes `optimizer`'s per-variable and fused updates through difflr.

    The hooks receive the original bound method as their first argument. The
    optimizer's own weight decay is switched off: difflr applies it inside
    the hooks, scaled per variable, at the same point of the step.
    """
    original_update = optimizer.update_step

    def hooked_update_step(gradient, variable, learning_rate):
        return update_step(original_update, gradient, variable, learning_rate)

    object.__setattr__(optimizer, "update_step", hooked_update_step)
    if has_fused_update(optimizer):
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


def rate_form(optimizer):
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

    Checked against the update math of Keras 3.12.0 to 3.15.1, on every
    backend (the torch backend's fused `_parallel_update_step` too).
    """
    if _updates_as(optimizer, keras.optimizers.SGD):
        return "gradient"
    for name in _RATE_TIMES_STEP:
        if _updates_as(optimizer, getattr(keras.optimizers, name)):
            if name == "RMSprop" and optimizer.momentum:
                return None
            return "step"
    return None


def torch_update_with_rates(optimizer, variables):
    """Keras's fused torch update of SGD or Adam/AdamW, with one learning
    rate per variable; None for any other optimizer.

    Keras's `_parallel_update_step` takes one rate for all the variables.
    This is its math (`keras/src/backend/torch/optimizers/torch_sgd.py` and
    `torch_adam.py`, the same from Keras 3.12.0 to 3.15.1) with that rate
    made a per-tensor scalar of the same `torch._foreach_*` calls, so the
    variables keep the plain optimizer's kernels and passes over them:

        SGD:   b <- momentum * b - lr_i * g;   v <- v + b
               (Nesterov: v <- v - lr_i * g + momentum * b; no momentum:
               v <- v - lr_i * g)
        Adam:  m <- beta_1 * m + (1 - beta_1) * g
               u <- beta_2 * u + (1 - beta_2) * g^2   (AMSGrad: u_hat)
               v <- v - lr_i * sqrt(1 - beta_2^t) / (1 - beta_1^t)
                          * m / (sqrt(u) + epsilon)

    Reads the private slot lists (`momentums`, `_momentums`, `_velocities`,
    `_velocity_hats`) through `_get_variable_index`.

    Args:
        optimizer: the wrapped optimizer, on the torch backend.
        variables: the Keras variables of one fused update, in its order.

    Returns:
        None, or `update(grads, rates, scalars)`: `rates` is a 1-d tensor of
        the variables' learning rates, and `scalars(vector)` turns a 1-d
        tensor into a list of 0-d tensors (the per-tensor scalars).
    """
    import torch

    if not has_fused_update(optimizer):
        return None
    values = [v.value for v in variables]
    index = [optimizer._get_variable_index(v) for v in variables]

    if _updates_as(optimizer, keras.optimizers.SGD):
        momentum, nesterov = optimizer.momentum, optimizer.nesterov
        buffers = ([optimizer.momentums[i].value for i in index]
                   if momentum != 0 else None)

        def sgd(grads, rates, scalars):
            minus = scalars(-rates)  # v + g * (-lr_i): one kernel, as alpha=
            if buffers is None:
                torch._foreach_addcmul_(values, grads, minus)
                return
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_addcmul_(buffers, grads, minus)
            if nesterov:
                torch._foreach_addcmul_(values, grads, minus)
                torch._foreach_add_(values, buffers, alpha=momentum)
            else:
                torch._foreach_add_(values, buffers)

        return sgd

    if _updates_as(optimizer, keras.optimizers.Adam):
        beta_1, beta_2 = optimizer.beta_1, optimizer.beta_2
        epsilon, amsgrad = optimizer.epsilon, optimizer.amsgrad
        first = [optimizer._momentums[i].value for i in index]
        second = [optimizer._velocities[i].value for i in index]
        hats = ([optimizer._velocity_hats[i].value for i in index]
                if amsgrad else None)
        dtype, device = values[0].dtype, values[0].device
        beta_1_t = torch.tensor(beta_1, dtype=dtype, device=device)
        beta_2_t = torch.tensor(beta_2, dtype=dtype, device=device)

        def adam(grads, rates, scalars):
            step = (optimizer.iterations + 1).to(dtype)
            alphas = scalars(rates.to(dtype) * torch.sqrt(1 - torch.pow(beta_2_t, step))
                             / (1 - torch.pow(beta_1_t, step)))
            torch._foreach_mul_(first, beta_1)
            torch._foreach_add_(first, grads, alpha=1 - beta_1)
            torch._foreach_mul_(second, beta_2)
            torch._foreach_add_(second, torch._foreach_mul(grads, grads),
                                alpha=1 - beta_2)
            denominators = second
            if amsgrad:
                torch._foreach_maximum_(hats, second)
                denominators = hats
            torch._foreach_add_(
                values,
                torch._foreach_div(
                    torch._foreach_mul(first, alphas),
                    torch._foreach_add(torch._foreach_sqrt(denominators), epsilon),
                ),
                alpha=-1,
            )

        return adam
    return None


def pause_form(optimizer):
    """What a multiplier of 0 does to a variable's optimizer state.

    A paused variable never moves. Its state follows the variable's own copy
    of the optimizer at learning rate 0 wherever that is well defined:

    Returns:
        - `"rate"`: the update at rate 0 leaves the variable exactly where it
          is and moves the state as that copy's (the optimizers of
          `rate_form`, and RMSprop: Adam's moments keep tracking the
          gradients, so its bias correction is right when the variable
          resumes). Keras's SGD and RMSprop with momentum keep the rate inside
          their momentum, a velocity in the variable's own units: it is
          cleared when the pause begins (`velocity_slots`), and at rate 0 it
          stays 0, as the velocity of a variable that does not move.
        - `"hold"`: anything else (Ftrl divides by the rate; a subclass may do
          anything): the variable and its state are both held.
    """
    if rate_form(optimizer) or _updates_as(optimizer, keras.optimizers.RMSprop):
        return "rate"
    return "hold"


def velocity_slots(optimizer, variables):
    """The slots of each of `variables` that hold a velocity: the learning
    rate times an average of gradients, which moves the variable even at
    rate 0 (Keras's SGD `momentums` and RMSprop `_momentums`, with momentum).

    Returns:
        A list per variable: its velocity slot, or nothing.
    """
    slots = None
    if _updates_as(optimizer, keras.optimizers.SGD) and optimizer.momentum:
        slots = optimizer.momentums
    elif _updates_as(optimizer, keras.optimizers.RMSprop) and optimizer.momentum:
        slots = optimizer._momentums
    if not slots:
        return [[] for _ in variables]
    return [[slots[optimizer._get_variable_index(v)]] for v in variables]


def _updates_as(optimizer, cls):
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


def called_from_keras_torch_train_step(max_depth=16):
    """Whether the torch backend's own `Model.train_step` is on the call stack.

    That `train_step` (used by `fit` and `train_on_batch`, also when a
    subclass calls `super().train_step`) computes and applies gradients in
    one process: it has no cross-process gradient synchronisation. A few
    frames separate it from the optimizer (`LossScaleOptimizer`, ...).
    Checked against Keras 3.12.0 to 3.15.1, where it lives in
    `keras.src.backend.torch.trainer`.
    """
    from keras.src.backend.torch import trainer

    target = trainer.TorchTrainer.train_step.__code__
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return False
        if frame.f_code is target:
            return True
        frame = frame.f_back
    return False
