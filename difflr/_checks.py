"""Argument checks shared by the schedules, callbacks and recipes.

Each raises an error that names the caller, the argument, what was received
and what would be accepted.
"""

import math
import numbers


def scalar(value):
    """A 0-d array or tensor (NumPy, TensorFlow, JAX, torch) as a Python
    number; anything else unchanged."""
    shape = getattr(value, "shape", None)
    if shape is None or isinstance(value, (str, bytes)):
        return value
    try:
        if tuple(shape) != ():
            return value
    except TypeError:  # a shape of unknown rank
        return value
    item = getattr(value, "item", None)
    return item() if item is not None else value.numpy().item()


def integer(value, name, who, minimum=0):
    """`value` as a Python int >= `minimum`, or raises."""
    value = scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{who}: `{name}` must be an integer >= {minimum}; received "
            f"{value!r} of type {type(value).__name__}."
        )
    if value < minimum:
        raise ValueError(
            f"{who}: `{name}` must be an integer >= {minimum}; received "
            f"{value}."
        )
    return int(value)


def number(value, name, who, low=None, high=None, low_open=False,
           high_open=False):
    """`value` as a finite Python float within the given bounds, or raises.

    `low_open`/`high_open` exclude the bound itself.
    """
    value = scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{who}: `{name}` must be a number; received {value!r} of type "
            f"{type(value).__name__}."
        )
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        accepted = (" " + " and ".join(bounds)) if bounds else ""
        raise ValueError(
            f"{who}: `{name}` must be a finite number{accepted}; received "
            f"{value}."
        )
    return value
