"""The update on the torch backend: eager, fused, with host-float multipliers.

Keras's torch optimizers update a list of variables at once with
`torch._foreach_*` kernels at one scalar rate (`_parallel_update_step`). A
`Plan`, cached until the multipliers or the variables change, keeps that to a
single fused update whatever the number of distinct multipliers:

- `"rates"`: SGD, Adam and AdamW run Keras's kernels restated with the rate
  as a per-tensor scalar (`torch_sgd`, `torch_adam`): the plain optimizer's
  calls, no extra pass.
- `"step"`: Adamax, Nadam, Adagrad, Adadelta, Lion and RMSprop without
  momentum (`_keras_compat.scaling` "step") take their step at the base rate
  in zeroed variables, which are then scaled by m and added back.
- `"groups"`: other optimizers, and a few groups of large tensors (where the
  step form's extra passes cost more than a call per group), run one call
  per group of equal multipliers, as PyTorch's param groups do.

The decoupled weight decay of all decayed variables is one more call,
`v <- v * (1 - lr * m * d * weight_decay)`. A paused variable (m = 0) runs at
rate 0 or is left out, as `difflr._pause` says.

Under torch.compile, a plan from host floats would be compiled into the
graph: the hooks hand over to `torch_traced`, which reads the multipliers
from tensors. So do they while a schedule is in force (`difflr._scheduled`),
whose values change at every step on the device, but for the "rates" form,
whose per-variable rates are scaled by the schedules' values at each step
(`TorchUpdate.scales`).
"""

import math

import torch

import keras

from difflr import _keras_compat
from difflr import _pause
from difflr._update import torch_kernels
from difflr._update import torch_traced
from difflr._update.base import FULL_PRECISION
from difflr._update.base import decay_then_update


class TorchUpdate:
    """The update hooks of a built `LRMultiplier` on the torch backend."""

    def __init__(self, optimizer, layout, multipliers, pause):
        self.optimizer = optimizer
        self.layout = layout
        self.multipliers = multipliers
        self.pause = pause
        full = all(v.dtype in FULL_PRECISION for v in layout.tracked_variables)
        self.step_form = full and _keras_compat.scaling(optimizer) == "step"
        self._plan = None  # (signature, Plan)
        self._traced = torch_traced.TracedUpdate(self)
        self._in_step = None  # this step's (m, d) tensors
        self._scales = None  # this step's schedule values

    def before_apply(self):
        _refuse_unsynchronised_fit()
        self._in_step = self._scales = None
        if not torch_traced.is_tracing():
            # A restore may have written the vectors (no cost if not): the
            # plan is made from what they hold.
            self.multipliers.refresh()

    def after_apply(self):
        self._in_step = self._scales = None

    def in_step(self):
        """This step's multipliers as tensors (`_state.Multipliers.in_step`),
        computed once per step."""
        if self._in_step is None:
            self._in_step = self.multipliers.in_step(
                _keras_compat.schedule_step(self.optimizer))
        return self._in_step

    def _on_device(self):
        """Whether the one-variable update reads the multipliers from the
        device: under torch.compile, and while a schedule is in force (its
        values change every step, where host floats would be stale). (The
        fused update decides per `Plan`: its "rates" form scales its rates.)"""
        return torch_traced.is_tracing() or self.multipliers.scheduled

    def scales(self, indices):
        """The values at this step of the schedules `indices` (a tensor of
        table places, -1 for none: 1) point to, each schedule computed once
        per step."""
        if self._scales is None:
            self._scales = self.multipliers.table.values(
                _keras_compat.schedule_step(self.optimizer))
        return self._scales[indices + 1]

    def update_step(self, original, gradient, variable, learning_rate):
        """One variable, eagerly (optimizers without a fused update)."""
        learning_rate = _rate_tensor(learning_rate)
        if self._on_device():
            return self._traced.update_step(original, gradient, variable, learning_rate)
        index = self.layout.index_of(variable)
        if index is None:
            return original(gradient, variable, learning_rate)
        lr, decay = self.multipliers.on_device()
        m = lr[index]
        if m == 0 and self.pause.mode == "hold":
            return
        rate = learning_rate * m
        weight_decay = self.layout.weight_decay[index]
        decay_then_update(self.optimizer, original, gradient, variable, rate,
                          None if weight_decay is None else rate * decay[index] * weight_decay)

    def parallel_update_step(self, original, grads, variables, learning_rate):
        """All variables at once: Keras's fused update, per `Plan`."""
        learning_rate = _rate_tensor(learning_rate)
        tracing = torch_traced.is_tracing()
        plan = None if tracing else self.plan(variables)
        if tracing or (plan.scheduled and plan.form != "rates"):
            return self._traced.parallel_update_step(
                original, grads, variables, learning_rate)
        if not plan.running:
            self._advance_global_state(original, grads, variables, learning_rate)
            return
        run_grads, run_vars = grads, variables
        if len(plan.running) < len(variables):
            run_grads = [grads[p] for p in plan.running]
            run_vars = [variables[p] for p in plan.running]
        if plan.decayed:
            coefficients = plan.decay_coefficients
            if plan.scheduled:
                coefficients = coefficients * (self.scales(plan.decayed_lr_index)
                                               * self.scales(plan.decayed_decay_index))
            factors = 1 - learning_rate * coefficients
            torch._foreach_mul_(plan.decayed_values, plan.decay_scalars(factors))
        if plan.single is not None:
            original(run_grads, run_vars, learning_rate * plan.single)
        elif plan.form == "rates":
            rates = plan.rates
            if plan.scheduled:
                rates = rates * self.scales(plan.lr_index)
            plan.kernel(run_grads, learning_rate * rates, plan.rate_scalars)
        elif plan.form == "step":
            moved = plan.moved_values
            # The old values wait as -v: a copy in one call (a transient one,
            # so training does not hold a second copy of the weights).
            negated = torch._foreach_neg(moved)
            torch._foreach_zero_(moved)
            original(run_grads, run_vars, learning_rate)
            torch._foreach_mul_(moved, plan.moved_multipliers)
            torch._foreach_sub_(moved, negated)  # v + m * step, exactly
        else:
            self._update_by_group(original, plan, grads, variables, learning_rate)

    def _update_by_group(self, original, plan, grads, variables, learning_rate):
        torch_kernels.each_from_the_step_start(self.layout.global_state, [
            lambda m=m, positions=positions: original(
                [grads[p] for p in positions], [variables[p] for p in positions],
                learning_rate * m)
            for m, positions in plan.groups])

    def _advance_global_state(self, original, grads, variables, learning_rate):
        """Everything is paused, but per-step global state (Nadam's) must
        still advance: update one variable and put it back."""
        if not self.layout.global_state:
            return
        index = self.layout.index_of(variables[0])
        kept = torch_kernels.snapshot([variables[0]] + self.layout.slots[index])
        original(grads[:1], variables[:1], learning_rate)
        torch_kernels.restore(kept)

    def plan(self, variables):
        """The `Plan` of one fused update of `variables`, cached until the
        multipliers or the variables change."""
        signature = (self.multipliers.version, tuple(map(id, variables)))
        if self._plan is None or self._plan[0] != signature:
            self._plan = (signature, Plan(self, variables))
        return self._plan[1]


class Plan:
    """How to run one fused update of `variables`: positions in that list by
    role, and the tensors each role needs."""

    def __init__(self, update, variables):
        lr, decay = update.multipliers.on_device()
        # (A scheduled variable's factor is 1: its schedule scales it.)
        lr_index, decay_index = update.multipliers.schedule_indices()
        layout, pause = update.layout, update.pause
        self.running, self.multipliers = [], []
        self.moved, self.moved_multipliers = [], []
        self.decayed, coefficients, groups = [], [], {}
        running_index, decayed_index = [], []
        for p, v in enumerate(variables):
            j = layout.index_of(v)
            if lr[j] == 0 and pause.mode == "hold":
                continue  # paused: no update, no decay, state held
            self.running.append(p)
            self.multipliers.append(lr[j])
            running_index.append(lr_index[j])
            groups.setdefault((lr[j], lr_index[j]), []).append(p)
            if lr[j] != 1:
                self.moved.append(p)
                self.moved_multipliers.append(lr[j])
            if layout.weight_decay[j] is not None and lr[j] != 0:
                self.decayed.append(p)
                decayed_index.append((lr_index[j], decay_index[j]))
                coefficients.append(lr[j] * decay[j] * layout.weight_decay[j])
        # Where a schedule is in force, the rates are scaled by its value at
        # each step: only the "rates" form runs so (others: `torch_traced`).
        self.scheduled = any(i != -1 for i in running_index) or any(
            i != (-1, -1) for i in decayed_index)
        self.groups = [(m, ps) for (m, _), ps in groups.items()]
        self.single = (self.groups[0][0] if len(self.groups) == 1
                       and not self.scheduled else None)
        self.form = None if self.single is not None else self._form(update, variables)
        device = variables[0].value.device
        if self.scheduled:
            def index(values):
                return torch.tensor(values, dtype=torch.long, device=device)
            self.lr_index = index(running_index)
            self.decayed_lr_index = index([i for i, _ in decayed_index])
            self.decayed_decay_index = index([i for _, i in decayed_index])
        if self.form == "rates":
            self.rates = torch.tensor(self.multipliers, dtype=torch.float32, device=device)
            self.rate_scalars = Scalars()
        elif self.form == "step":
            self.moved_multipliers = [
                torch.tensor(m, dtype=variables[p].value.dtype, device=device)
                for p, m in zip(self.moved, self.moved_multipliers)]
        # The torch tensors behind the variables (reading `.value` costs more
        # than the update of a small tensor).
        self.moved_values = [variables[p].value for p in self.moved]
        self.decayed_values = [variables[p].value for p in self.decayed]
        if self.decayed:
            self.decay_coefficients = torch.tensor(
                coefficients, dtype=torch.float32,
                device=variables[self.decayed[0]].value.device)
            self.decay_scalars = Scalars()

    def _form(self, update, variables):
        """`"rates"`, `"step"` or `"groups"`, for more than one multiplier."""
        self.kernel = torch_kernels.kernel(update.optimizer, [variables[p] for p in self.running])
        if self.kernel is not None:
            return "rates"
        if not update.step_form:
            return "groups"
        # The step form costs 4 extra passes over the moved tensors; one call
        # per group costs a fixed overhead per extra group. Rough costs
        # (about 1 us per tensor, 1 ns per number, 50 us per call) pick the
        # cheaper: the step form for many small tensors, groups for few
        # groups of large ones.
        numbers = sum(math.prod(variables[p].shape) for p in self.moved)
        if 4 * (len(self.moved) + numbers / 1000) <= 50 * (len(self.groups) - 1):
            return "step"
        return "groups"


class Scalars:
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


def _rate_tensor(learning_rate):
    """The base rate as a torch tensor. Keras passes its variable, whose
    product with a Python float (`lr * m`) would copy the float from the
    host: a blocking copy, per variable or group and step, on an
    accelerator. A tensor times a float is one kernel."""
    return _pause.read(learning_rate)


def _refuse_unsynchronised_fit():
    """Raises when Keras's own torch `train_step` runs in a process group.

    Up to Keras 3.15 there is no multi-process `fit` on the torch backend:
    its `train_step` neither wraps the model in `DistributedDataParallel` nor
    all-reduces gradients, so every process would silently train a diverging
    copy of the model. Keras 3.16 wraps it (`_keras_compat`), and custom loops
    over a `DistributedDataParallel` model, whose gradients are averaged, are
    fine.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    if world > 1 and _keras_compat.in_unsynchronised_torch_fit():
        raise RuntimeError(
            "LRMultiplier is being applied by Keras's own `train_step` "
            "(`model.fit` / `train_on_batch`) on the torch backend while "
            f"torch.distributed runs a process group of world size {world}. "
            f"Keras {keras.__version__}'s torch trainer does not synchronise "
            "gradients across processes here, so each process would train its "
            "own diverging copy of the model. Use Keras >= 3.16 (which wraps "
            "the model in DistributedDataParallel), or train in a custom loop: "
            "wrap the model in "
            "`torch.nn.parallel.DistributedDataParallel`, call "
            "`loss.backward()` through it, then `optimizer.apply([v.value.grad "
            "for v in model.trainable_variables], model.trainable_variables)`"
            " (see the README, 'Distributed training'). Or use the JAX "
            "backend's `keras.distribution` or TensorFlow's `tf.distribute`."
        )
