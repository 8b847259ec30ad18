"""No host synchronisation per training step (issue 25).

On an accelerator, a step that reads a value back from the device, or copies
host data to it, waits for all the work queued before it: training then runs
at the speed of that round trip. Nothing here has run on an accelerator, so
each check works on CPU with the device abstracted, during steady steps
(after the first, and after a `set_multipliers`), in `model.fit` and in a
custom loop (`optimizer.apply_gradients`), for each update path difflr has
(`CASES`), against the plain optimizer with the same settings:

- **torch** runs the update eagerly, so a sync would hide there. `Syncs`
  records every call that reads a tensor on the host (`item`, `tolist`,
  `numpy`, `bool(t)`, `float(t)`, `int(t)`, `t.__index__`, `.cpu()`,
  `repr`, ...), copies host data to the device (a tensor made from Python
  or NumPy values with a `device=`, a list or array used as an index: on
  CUDA a blocking copy, which synchronises) or has a shape that depends on
  values (`nonzero`, `masked_select`, a boolean index), with its call stack.
  None may be difflr's own, and difflr may cause no more of each kind than
  the plain optimizer does, plus what its schedules cost evaluated once a
  step (Keras's code, as for a learning-rate schedule). On CUDA, the same
  runs also count what `torch.cuda.set_sync_debug_mode` reports.
- **JAX** and **TensorFlow** compile the step, and difflr reads the
  multipliers inside it: no line of difflr may run during a steady step
  (so nothing of difflr can wait for the device), and on JAX the steady
  steps run under `jax.transfer_guard("disallow")` (a custom loop, its data
  placed on the device) or `jax.transfer_guard_device_to_host("disallow")`
  (`fit`). (On a CPU, device-to-host reads are not transfers for JAX: the
  guard bites on an accelerator only.)

With `DIFFLR_HOST_SYNC_REPORT=path`, the counts are written there as JSON
(`benchmarks/accelerator.py` reports them).
"""

import collections
import contextlib
import json
import os
import re
import sys
import threading
import traceback
import warnings

import numpy as np
import pytest
import keras

import difflr
from conftest import backend

schedules = keras.optimizers.schedules
BATCH = 8
RECORDED = 4  # steady steps recorded per run (an even number: accumulation)
_DIFFLR = os.path.dirname(os.path.abspath(difflr.__file__)) + os.sep


# What to run: one case per update path (`difflr._update`), each in `fit`
# and in a custom loop.

def _a(value):
    return lambda model: {model.get_layer("a"): value}


def _cosine():
    return schedules.CosineDecay(1.0, 40, alpha=0.1)


class Case:
    """An optimizer (`inner()`), difflr's rules for it (`rules(model)`),
    optionally new multipliers set after the first steps (`change(model)`)
    and mixed precision; on torch, `runs` names a difflr function that the
    path it exercises calls each step. Every case runs on torch, whose
    update runs eagerly; `compiled` ones on JAX and TensorFlow too (one per
    way their compiled step differs: compiling them all would take a
    minute a backend)."""

    def __init__(self, name, inner, rules, change=None, mixed=False, runs=None,
                 compiled=False):
        self.name, self.inner, self.rules = name, inner, rules
        self.change, self.mixed, self.runs = change, mixed, runs
        self.compiled = compiled  # also run on JAX and TensorFlow

    def schedules(self, model):
        return [v for v in (self.rules(model) or {}).values()
                if isinstance(v, schedules.LearningRateSchedule)]


_opt = keras.optimizers
CASES = [
    # torch: the fused "rates" plan (Keras's kernels, a rate per tensor).
    Case("Adam", lambda: _opt.Adam(0.01), _a(0.1), runs="torch_adam.py:update",
         compiled=True),
    Case("AdamW", lambda: _opt.AdamW(0.01, weight_decay=0.01), _a(0.1),
         runs="torch_adam.py:update"),
    Case("SGD momentum", lambda: _opt.SGD(0.01, momentum=0.9), _a(0.1),
         runs="torch_sgd.py:update", compiled=True),
    # One multiplier for all: the plain optimizer's own update.
    Case("Adam, no rules", lambda: _opt.Adam(0.01), lambda model: None),
    # The step form, one call per group, one variable at a time.
    Case("Adamax", lambda: _opt.Adamax(0.01), _a(0.1)),
    Case("RMSprop momentum", lambda: _opt.RMSprop(0.01, momentum=0.9), _a(0.1),
         runs="torch.py:_update_by_group"),
    Case("Ftrl", lambda: _opt.Ftrl(0.01), _a(0.1), runs="torch.py:update_step"),
    # Schedules: the "rates" plan scaled, else the multipliers from tensors.
    Case("AdamW, scheduled", lambda: _opt.AdamW(0.01, weight_decay=0.01),
         _a(_cosine()), runs="torch.py:scales", compiled=True),
    Case("Adamax, scheduled", lambda: _opt.Adamax(0.01, weight_decay=0.01),
         _a(_cosine()), runs="torch_traced.py:parallel_update_step"),
    Case("Ftrl, scheduled", lambda: _opt.Ftrl(0.01), _a(_cosine()),
         runs="torch_traced.py:update_step"),
    # After `set_multipliers`: a new plan; a pause that holds the state.
    Case("Adam, set_multipliers", lambda: _opt.Adam(0.01), _a(0.1),
         change=lambda model: {model.get_layer("a"): 0.5, model.get_layer("b"): 2.0},
         runs="torch_adam.py:update", compiled=True),
    Case("Ftrl, paused", lambda: _opt.Ftrl(0.01), _a(0.1), change=_a(0.0),
         runs="torch.py:update_step", compiled=True),
    # The wrapped optimizer's own settings.
    Case("Adam, global_clipnorm", lambda: _opt.Adam(0.01, global_clipnorm=1.0),
         _a(0.1), runs="torch_adam.py:update"),
    Case("Adam, gradient accumulation",
         lambda: _opt.Adam(0.01, gradient_accumulation_steps=2), _a(0.1),
         runs="torch_adam.py:update"),
    Case("Adam, mixed_float16", lambda: _opt.Adam(0.01), _a(0.1), mixed=True,
         runs="torch_adam.py:update", compiled=True),
]
LOOPS = ("fit", "custom loop")
RUN = [c for c in CASES if backend() == "torch" or c.compiled]


# Recording a window of steady steps.

class Sync:
    """One call that waits for the device: its `kind` ("device-to-host
    read", "host-to-device copy", "data-dependent shape"), the torch `call`,
    who made it (`owner`: "difflr", "keras" or "caller") and the Python
    stack, innermost last."""

    def __init__(self, kind, call, stack):
        self.kind, self.call, self.stack = kind, call, stack
        self.owner = _owner(stack)

    def __repr__(self):
        where = " <- ".join(f"{_short(f.filename)}:{f.lineno}:{f.name}"
                            for f in reversed(self.stack[-6:]))
        return f"{self.kind}: {self.call} ({self.owner}) at {where}"


# Keras frames that only carry a call (its ops, tensor conversions and the
# variables' operators): a sync under them is whoever called them.
_KERAS_PLUMBING = re.compile(
    r"keras/src/(ops/|utils/traceback_utils\.py|backend/common/|"
    r"backend/(torch|jax|tensorflow)/(core|numpy|math|nn|linalg|random)\.py)")


def _owner(stack):
    for frame in reversed(stack):
        path = frame.filename.replace(os.sep, "/")
        if frame.filename.startswith(_DIFFLR):
            return "difflr"
        if "/keras/" in path and not _KERAS_PLUMBING.search(path):
            return "keras"
    return "caller"


def _short(filename):
    path = filename.replace(os.sep, "/")
    for marker in ("/difflr/", "/keras/src/", "/tests/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return os.path.basename(path)


def _stack():
    import torch

    skipped = (os.path.abspath(__file__), os.path.dirname(torch.__file__) + os.sep)
    return [f for f in traceback.extract_stack() if not f.filename.startswith(skipped)]


class Window:
    """Entered around steady steps (once or more): records what they do that
    could wait for the device (`syncs` and `cuda_syncs` on torch) and every difflr function
    they call (`difflr_calls`, "file.py:function"), and guards JAX's
    transfers (`guard`: "all", "device-to-host" or None)."""

    def __init__(self, guard=None):
        self.guard = guard
        self.syncs, self.cuda_syncs, self.difflr_calls = [], [], []
        self._stack = None

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        if backend() == "torch":
            self._stack.enter_context(Syncs(self.syncs))
            self._stack.enter_context(_cuda_syncs(self.cuda_syncs))
        if backend() == "jax" and self.guard:
            import jax

            self._stack.enter_context(
                jax.transfer_guard("disallow") if self.guard == "all"
                else jax.transfer_guard_device_to_host("disallow"))
        self._stack.enter_context(_calls_into_difflr(self.difflr_calls))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def counts(self, owner=None):
        """{kind: count} of the `syncs` (of one `owner` if given)."""
        return collections.Counter(s.kind for s in self.syncs
                                   if owner is None or s.owner == owner)


@contextlib.contextmanager
def _calls_into_difflr(calls):
    """Appends "file.py:function" to `calls` for every call of a function of
    difflr in this thread (the training step runs in it)."""
    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(_DIFFLR):
            calls.append(f"{os.path.basename(frame.f_code.co_filename)}:"
                         f"{frame.f_code.co_name}")

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)


@contextlib.contextmanager
def _cuda_syncs(found):
    """On a CUDA device, appends to `found` every synchronisation PyTorch's
    sync debug mode reports; elsewhere nothing."""
    import torch

    if not torch.cuda.is_available():
        yield
        return
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    found.extend(str(w.message) for w in caught
                 if "synchroniz" in str(w.message))


# torch: the calls that wait for the device.

# Calls on a tensor that read its value on the host.
_READS = {"item", "tolist", "numpy", "__array__", "__bool__", "__float__", "__int__",
          "__index__", "__complex__", "__repr__", "__str__", "__format__",
          "__contains__", "cpu", "equal", "allclose", "is_nonzero"}
# Tensors made from host data: on the device, a blocking copy.
_FROM_HOST = {"tensor", "as_tensor", "asarray"}
# ATen ops whose output shape depends on the values (a read of a count).
_DATA_DEPENDENT = {"nonzero", "masked_select", "_unique2", "unique_dim",
                   "unique_consecutive", "argwhere"}

class Syncs:
    """Records in `syncs` (a list, new unless given), while entered, every
    call on the torch backend that waits for the device (`Sync`), at two
    levels: the Python API (a `TorchFunctionMode`, which sees `item`,
    `tolist`, `numpy`, `bool(t)` and the other Tensor methods that read a
    value, whatever the device), and ATen (a `TorchDispatchMode`, for a read
    or a data-dependent shape inside another op). A read the API level
    recorded is not counted again below it.

    On a CPU-only machine a `.to("cpu")` or a `.cuda()` cannot be told from
    a no-op: a move between host and device is counted where the two differ,
    that is on an accelerator.
    """

    def __init__(self, syncs=None):
        self.syncs = [] if syncs is None else syncs
        self._inside = threading.local()

    def __enter__(self):
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        recorder = self

        class Api(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return recorder._api(func, args, kwargs or {})

        class Aten(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return recorder._aten(func, args, kwargs or {})

        self._modes = [Api(), Aten()]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def counts(self, owner=None):
        """{kind: count} of the syncs (of one `owner` if given)."""
        return collections.Counter(s.kind for s in self.syncs
                                   if owner is None or s.owner == owner)

    def _api(self, func, args, kwargs):
        kind = _api_kind(getattr(func, "__name__", ""), args, kwargs)
        if kind is None:
            return func(*args, **kwargs)
        self.syncs.append(Sync(kind, func.__name__, _stack()))
        self._inside.depth = getattr(self._inside, "depth", 0) + 1
        try:
            return func(*args, **kwargs)
        finally:
            self._inside.depth -= 1

    def _aten(self, func, args, kwargs):
        if not getattr(self._inside, "depth", 0):
            kind = _aten_kind(func, args)
            if kind is not None:
                self.syncs.append(Sync(kind, str(func), _stack()))
        return func(*args, **kwargs)


def _api_kind(name, args, kwargs):
    import torch

    if name in _READS:
        return "device-to-host read"
    if name in ("to", "cuda") and args:
        return _move_kind(args[0], args[1:], kwargs, name)
    if (name in _FROM_HOST and args and not isinstance(args[0], torch.Tensor)
            and kwargs.get("device") is not None):
        return "host-to-device copy"
    if name in ("__getitem__", "__setitem__") and len(args) > 1:
        return _index_kind(args[1])
    return None


def _move_kind(tensor, args, kwargs, name):
    """The kind of `tensor.to(...)` or `tensor.cuda()`: a move between the
    host and a device, or None (a dtype, the same device). Only on an
    accelerator: on a CPU, host and device are one."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        return None
    target = torch.device("cuda") if name == "cuda" else None
    for a in list(args) + [kwargs.get("device")]:
        if target is None and isinstance(a, (str, torch.device)):
            target = torch.device(a)
    if target is None or (target.type == "cpu") == (tensor.device.type == "cpu"):
        return None
    return "device-to-host read" if target.type == "cpu" else "host-to-device copy"


def _index_kind(index):
    import torch

    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items):
        return "data-dependent shape"
    if any(isinstance(i, (list, np.ndarray)) for i in items):
        return "host-to-device copy"
    return None


def _aten_kind(func, args):
    import torch

    name = func.__name__.split(".")[0]
    if name == "_local_scalar_dense":
        return "device-to-host read"
    if name in _DATA_DEPENDENT:
        return "data-dependent shape"
    if name in ("index", "index_put", "index_put_") and len(args) > 1 and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] or ())):
        return "data-dependent shape"
    return None


# Training, with a window over the steady steps.

def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="a")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="b")(x))


def _data():
    rng = np.random.default_rng(0)
    n = BATCH * (RECORDED + 2)
    return (rng.normal(size=(n, 4)).astype("float32"),
            rng.normal(size=(n, 2)).astype("float32"))


class _Steady(keras.callbacks.Callback):
    """Holds `window` entered from the start of batch 1 to the start of the
    last batch: whole steps, none the first of the `fit`. (Batch-begin hooks
    only: a batch-end hook would make Keras read the logs at every step.)"""

    def __init__(self, window, last):
        super().__init__()
        self.window, self.last = window, last

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 1:
            self.window.__enter__()
        if batch == self.last:
            self.window.__exit__(None, None, None)


def _fit(model, optimizer, change, window):
    x, y = _data()
    model.compile(optimizer=optimizer, loss="mse")
    fit = dict(batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    model.fit(x, y, **fit)
    if change is not None:
        change()
    model.fit(x, y, callbacks=[_Steady(window, len(x) // BATCH - 1)], **fit)


def _custom_loop(model, optimizer, change, window):
    x, y = _data()
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    loop = {"jax": _JaxLoop, "tensorflow": _TfLoop, "torch": _TorchLoop}[backend()](
        model, optimizer)
    loop.step(*batches[0])
    if change is not None:
        loop.change(change)
    loop.step(*batches[1])  # (the first step after a change)
    for x_batch, y_batch in batches[2:2 + RECORDED]:
        placed = loop.place(x_batch, y_batch)
        with window:
            loop.step(*placed)


def _mse(y, prediction):
    return keras.ops.mean(keras.ops.square(keras.ops.cast(prediction, "float32") - y))


class _TorchLoop:
    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def place(self, x, y):
        return tuple(keras.ops.convert_to_tensor(a) for a in (x, y))

    def step(self, x, y):
        import torch

        x, y = self.place(x, y)  # (no-ops for placed data)
        loss = self.optimizer.scale_loss(_mse(y, self.model(x, training=True)))
        self.model.zero_grad()
        loss.backward()
        variables = self.model.trainable_variables
        with torch.no_grad():
            self.optimizer.apply_gradients(zip([v.value.grad for v in variables], variables))

    def change(self, change):
        change()


class _TfLoop(_TorchLoop):
    def __init__(self, model, optimizer):
        import tensorflow as tf

        super().__init__(model, optimizer)
        self._step = tf.function(self._eager_step)

    def _eager_step(self, x, y):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = self.optimizer.scale_loss(_mse(y, self.model(x, training=True)))
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    def step(self, x, y):
        self._step(*self.place(x, y))


class _JaxLoop:
    """A custom loop as JAX runs one: a jitted step of `stateless_apply`,
    the state passed in and out (written back to the variables for a
    `set_multipliers`)."""

    def __init__(self, model, optimizer):
        import jax

        self.model, self.optimizer = model, optimizer
        optimizer.build(model.trainable_variables)
        self._load()

        def loss(trainable, non_trainable, optimizer_values, x, y):
            prediction, non_trainable = model.stateless_call(
                trainable, non_trainable, x, training=True)
            mapping = list(zip(optimizer.variables, optimizer_values))
            with keras.StatelessScope(state_mapping=mapping):
                return optimizer.scale_loss(_mse(y, prediction)), non_trainable

        gradients = jax.grad(loss, has_aux=True)

        def step(state, x, y):
            trainable, non_trainable, optimizer_values = state
            grads, non_trainable = gradients(trainable, non_trainable,
                                             optimizer_values, x, y)
            trainable, optimizer_values = optimizer.stateless_apply(
                optimizer_values, grads, trainable)
            return trainable, non_trainable, optimizer_values

        self._step = jax.jit(step)

    def _variables(self):
        return (self.model.trainable_variables, self.model.non_trainable_variables,
                self.optimizer.variables)

    def _load(self):
        self.state = tuple([v.value for v in vs] for vs in self._variables())

    def place(self, x, y):
        import jax

        return jax.device_put((x, y))

    def step(self, x, y):
        self.state = self._step(self.state, x, y)

    def change(self, change):
        for variables, values in zip(self._variables(), self.state):
            for v, value in zip(variables, values):
                v.assign(value)
        change()
        self._load()


def _run(case, loop, variant):
    """Trains `case` in `loop` with the plain optimizer or difflr's
    (`variant`); returns the `Window` of its steady steps, and the schedules'
    cost (`_schedule_cost`)."""
    if case.mixed:
        keras.config.set_dtype_policy("mixed_float16")
    model = _model()
    optimizer = case.inner()
    change = None
    if variant == "difflr":
        optimizer = difflr.LRMultiplier(optimizer, case.rules(model))
        if case.change is not None:
            change = lambda: optimizer.set_multipliers(case.change(model))
    used = optimizer
    if case.mixed and loop == "custom loop":  # (`compile` wraps it for `fit`)
        used = keras.optimizers.LossScaleOptimizer(optimizer)
    window = Window(guard="all" if loop == "custom loop" else "device-to-host")
    (_fit if loop == "fit" else _custom_loop)(model, used, change, window)
    return window, _schedule_cost(case.schedules(model), optimizer)


def _schedule_cost(found, optimizer):
    """A `Window` over one evaluation of each schedule in `found` at the
    optimizer's step (Keras's code: what the plain optimizer would run for
    a learning-rate schedule)."""
    with Window() as window:
        for schedule in found:
            keras.ops.cast(schedule(optimizer.iterations), "float32")
    return window


# The checks.

_FOUND = []  # for DIFFLR_HOST_SYNC_REPORT


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("DIFFLR_HOST_SYNC_REPORT")
    if path and _FOUND:
        with open(path, "w") as f:
            json.dump({"backend": backend(), "runs": _FOUND}, f, indent=1)


def _record(case, loop, plain, wrapped, cost):
    _FOUND.append({
        "case": case.name, "loop": loop, "steps": RECORDED,
        "plain": dict(plain.counts()), "difflr": dict(wrapped.counts()),
        "schedules, once": dict(cost.counts()),
        "difflr's own": [repr(s) for s in wrapped.syncs if s.owner == "difflr"],
        "cuda syncs": [len(plain.cuda_syncs), len(wrapped.cuda_syncs)],
        "difflr calls": len(wrapped.difflr_calls)})


def _check(case, plain, wrapped, cost):
    """difflr's steady steps wait for the device no more than the plain
    optimizer's (see the module's docstring)."""
    if backend() != "torch":
        assert wrapped.difflr_calls == [], (
            f"difflr code ran during compiled steady steps: {wrapped.difflr_calls[:10]}")
        return
    own = [s for s in wrapped.syncs if s.owner == "difflr"]
    assert not own, "difflr's own host syncs in steady steps:\n" + "\n".join(map(repr, own))
    allowed = plain.counts() + collections.Counter(
        {kind: RECORDED * n for kind, n in cost.counts().items()})
    more = {kind: (n, allowed[kind]) for kind, n in wrapped.counts().items()
            if n > allowed[kind]}
    assert not more, (
        f"more syncs than the plain optimizer (+ schedules): {more}\n"
        + "\n".join(map(repr, wrapped.syncs)))
    assert len(wrapped.cuda_syncs) <= (len(plain.cuda_syncs)
                                       + RECORDED * len(cost.cuda_syncs)), (
        wrapped.cuda_syncs, plain.cuda_syncs)
    if case.runs:
        assert case.runs in wrapped.difflr_calls, (
            f"{case.name} no longer runs {case.runs}: "
            f"{sorted(set(wrapped.difflr_calls))}")


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("case", RUN, ids=[c.name for c in RUN])
def test_steady_steps_wait_for_the_device_no_more_than_plain(case, loop):
    # The plain run is the reference on torch and, on JAX, shows that the
    # transfer guard passes for Keras's own steps (on an accelerator, a
    # transfer of Keras's own fails it first, with Keras's stack).
    plain = Window() if backend() == "tensorflow" else _run(case, loop, "plain")[0]
    wrapped, cost = _run(case, loop, "difflr")
    _record(case, loop, plain, wrapped, cost)
    _check(case, plain, wrapped, cost)


# The recorder itself.

def _waits():
    """Calls that wait for the device, by the kind `Syncs` must record."""
    import torch

    t = torch.arange(4.0)
    read, copy, shape = "device-to-host read", "host-to-device copy", "data-dependent shape"
    return {
        "t.item()": (lambda: t[0].item(), read),
        "t.tolist()": (lambda: t.tolist(), read),
        "t.numpy()": (lambda: t.numpy(), read),
        "np.asarray(t)": (lambda: np.asarray(t), read),
        "bool(t)": (lambda: bool(t[1] > 0), read),
        "float(t)": (lambda: float(t[1]), read),
        "int(t)": (lambda: int(t[1]), read),
        "a list indexed by t": (lambda: [0, 1][t[1].long()], read),
        "repr(t)": (lambda: repr(t), read),
        "f'{t}'": (lambda: f"{t[0]}", read),
        "t.cpu()": (lambda: t.cpu(), read),
        "torch.equal": (lambda: torch.equal(t, t), read),
        "torch.tensor(floats, device=)": (
            lambda: torch.tensor([1.0, 2.0], device=t.device), copy),
        "torch.as_tensor(float, device=)": (
            lambda: torch.as_tensor(0.5, device=t.device), copy),
        "t[list]": (lambda: t[[0, 2]], copy),
        "t[array] = 0": (lambda: t.clone().__setitem__(np.array([1]), 0.0), copy),
        "t.nonzero()": (lambda: t.nonzero(), shape),
        "t.masked_select": (lambda: t.masked_select(t > 1), shape),
        "t[bool mask]": (lambda: t[t > 1], shape),
        "torch.unique": (lambda: torch.unique(t), shape),
    }


def _no_waits():
    """Calls that queue work on the device without waiting for it."""
    import torch

    t = torch.arange(4.0)
    return {
        "t * 2.0": lambda: t * 2.0,
        "t + a 0-d tensor": lambda: t + t[1],
        "torch.where": lambda: torch.where(t > 1, t, 0.0),
        "t[int]": lambda: t[1],
        "t[long tensor]": lambda: t[torch.arange(0, 4, 2, device=t.device)],
        "t.to(t.device)": lambda: t.to(t.device),
        "torch.ones(device=)": lambda: torch.ones(3, device=t.device),
        "torch.full(device=)": lambda: torch.full((), 0.5, device=t.device),
        "t.copy_(t)": lambda: t.clone().copy_(t),
        "torch._foreach_mul_": lambda: torch._foreach_mul_([t.clone()], [t[1]]),
        "t.shape, len(t)": lambda: (t.shape, len(t)),
    }


def test_the_recorder_sees_what_waits_for_the_device_and_nothing_else():
    """`Syncs` against a list of torch calls, each known to wait for the
    device (one sync of its kind) or not (none). It runs on raw torch
    tensors, so on every backend's pass."""
    for name, (call, kind) in _waits().items():
        with Syncs() as recorded:
            call()
        assert [s.kind for s in recorded.syncs] == [kind], (name, recorded.syncs)
    for name, call in _no_waits().items():
        with Syncs() as recorded:
            call()
        assert recorded.syncs == [], (name, recorded.syncs)


def test_a_read_added_to_the_torch_update_fails_the_check(monkeypatch):
    """The deliberate mistake the check is for: a per-step `.item()` in the
    fused update."""
    if backend() != "torch":
        pytest.skip("the fused torch update")
    from difflr._update import torch as torch_update

    original = torch_update.Scalars.__call__

    def reading(self, vector):
        vector.sum().item()
        return original(self, vector)

    monkeypatch.setattr(torch_update.Scalars, "__call__", reading)
    case = CASES[0]
    plain, _ = _run(case, "fit", "plain")
    wrapped, cost = _run(case, "fit", "difflr")
    with pytest.raises(AssertionError, match="difflr's own host syncs") as failed:
        _check(case, plain, wrapped, cost)
    listed = failed.value.args[0].split("\nassert ")[0]
    assert listed.count("device-to-host read: item (difflr)") == RECORDED, listed
