"""What a training step executes, counted rather than timed (so it does not
depend on the machine's load): XLA kernels in JAX's compiled train step,
operations in TensorFlow's traced train step, and on the torch backend the
`torch._foreach_*` calls and ATen operations of one optimizer step.

`tests/test_fast_paths.py` holds difflr to the plain optimizer's counts;
`benchmarks/op_counts.py` reports them.
"""

import re

import keras


def count(model, x, y):
    """What one train step of the compiled and fitted `model` executes, on
    the current backend: an int (JAX kernels, TensorFlow ops), or on torch a
    dict `{"foreach": ..., "aten": ...}`."""
    count_of = {"jax": _jax_kernels, "tensorflow": _tf_ops, "torch": _torch_ops}
    return count_of[keras.backend.backend()](model, x, y)


# Entries of a compiled XLA module that launch no kernel.
_NO_KERNEL = re.compile(r"= \S+ (parameter|constant|tuple|get-tuple-element|bitcast)\(")


def _jax_kernels(model, x, y):
    import jax

    state = tuple([v.value for v in vs] for vs in (
        model.trainable_variables, model.non_trainable_variables,
        model.optimizer.variables, model.metrics_variables))
    # Compiled as Keras's JAX trainer compiles it: with the state donated, so
    # that state the step returns unchanged (the multipliers, the learning
    # rate) can keep its buffer instead of being copied.
    step = jax.jit(model.train_step, donate_argnums=0)
    text = step.lower(state, (x, y)).compile().as_text()
    entry = text[text.index("ENTRY"):]
    return sum(1 for line in entry.splitlines()
               if " = " in line and not _NO_KERNEL.search(line))


def _tf_ops(model, x, y):
    import tensorflow as tf

    graph = tf.function(lambda a, b: model.train_step((a, b))).get_concrete_function(
        tf.constant(x), tf.constant(y)).graph
    ops = [op.type for op in graph.get_operations()]
    # Constants and placeholders are not executed work.
    return sum(1 for t in ops if t not in ("Const", "Placeholder", "NoOp"))


def _torch_ops(model, x, y):
    import torch
    from torch.profiler import profile

    grads = [torch.ones_like(v.value) for v in model.trainable_variables]
    model.optimizer.apply(grads, model.trainable_variables)  # warm
    with profile() as prof:
        model.optimizer.apply(grads, model.trainable_variables)
    return count_events(prof.events())


def count_events(events):
    """Outermost `aten::_foreach_*` calls, and all ATen operations."""
    def nested_in_foreach(event):
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::_foreach"):
                return True
            parent = parent.cpu_parent
        return False

    return {"foreach": sum(1 for e in events if e.name.startswith("aten::_foreach")
                           and not nested_in_foreach(e)),
            "aten": sum(1 for e in events if e.name.startswith("aten::"))}
