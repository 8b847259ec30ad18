"""What a measurement ran on, for the demo's and the benchmarks' reports
and the test summary."""

import platform
from importlib import metadata

# Packages published under more than one distribution name.
_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu")}


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_version(name):
    """The installed version of package `name` (TensorFlow also as
    `tensorflow-cpu`), or "not installed"."""
    for dist in _DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return "not installed"


def device():
    """The device Keras computes on, as its backend places a new tensor:
    `{"backend", "kind", "count"}`, `kind` being "cpu", or the accelerator
    and its model ("cuda:0 NVIDIA A100-SXM4-40GB", "tpu:0 TPU v4"), and
    `count` how many devices of that platform the backend sees."""
    import keras

    backend = keras.backend.backend()
    placed = keras.ops.zeros(())
    describe = {"jax": _jax_device, "tensorflow": _tf_device, "torch": _torch_device}
    kind, count = describe.get(backend, lambda t: ("cpu", 1))(placed)
    return {"backend": backend, "kind": kind, "count": count}


def device_line(found=None):
    """`device()` (or `found`) in words: "jax on cpu (1 device)", "torch on
    cuda:0 NVIDIA A100-SXM4-40GB (8 devices)"."""
    d = found or device()
    return (f"{d['backend']} on {d['kind']} "
            f"({d['count']} device{'' if d['count'] == 1 else 's'})")


def _jax_device(placed):
    import jax

    d = next(iter(placed.devices()))
    if d.platform == "cpu":
        return "cpu", len(jax.devices("cpu"))
    return f"{d.platform}:{d.id} {d.device_kind}", len(jax.devices(d.platform))


def _tf_device(placed):
    import tensorflow as tf

    # ".../device:GPU:0": the type and index of the device it is on.
    kind, index = placed.device.rsplit("device:", 1)[-1].split(":")
    physical = tf.config.list_physical_devices(kind)
    if kind == "CPU":
        return "cpu", len(tf.config.list_logical_devices("CPU"))
    details = tf.config.experimental.get_device_details(physical[int(index)])
    name = details.get("device_name", kind)
    return f"{kind.lower()}:{index} {name}", len(physical)


def _torch_device(placed):
    import torch

    d = placed.device
    if d.type == "cuda":
        index = d.index or 0
        return f"cuda:{index} {torch.cuda.get_device_name(index)}", torch.cuda.device_count()
    return d.type, 1
