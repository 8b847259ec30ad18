"""What a measurement ran on, for the demo's and the benchmarks' reports."""

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
